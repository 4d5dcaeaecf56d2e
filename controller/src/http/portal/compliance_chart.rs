//! The compliance percentage over time as a server-rendered SVG: one point per evaluation
//! (an evaluation that judged no VM is a hollow point on the base line), the judged ones
//! joined by a line; with a title, a description naming the numbers, and a table of the
//! same numbers for readers who do not see the picture.

use jitgate_api::ScanSummary;

use crate::http::portal::page::when_utc;

/// The drawing's size (viewBox units) and its margins.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;

/// One evaluation on the chart.
pub struct Point {
    pub scan_id: i64,
    pub x: String,
    pub y: String,
    /// Judged VMs (the percentage is defined).
    pub judged: bool,
    /// The evaluation the page shows (as of).
    pub current: bool,
    /// "Evaluation 7, 2026-11-30 10:15 UTC: 66.7 % compliant (2 of 3)".
    pub label: String,
    pub time: String,
    pub percentage: String,
    pub compliant: i64,
    pub non_compliant: i64,
    pub unknown: i64,
    pub unmanaged: i64,
    pub reason: String,
}

/// A horizontal line of the grid with its label.
pub struct Grid {
    pub y: String,
    pub label: String,
}

pub struct Chart {
    pub view_box: String,
    pub points: Vec<Point>,
    /// `x,y x,y ...` of the judged points, for a polyline (empty with fewer than two).
    pub line: String,
    pub grid: Vec<Grid>,
    pub left: String,
    pub right: String,
    pub bottom: String,
    pub first: String,
    pub last: String,
    pub description: String,
}

/// A percentage as the pages show it: "66.7 %", or "none judged".
pub fn percent(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:.1} %"),
        None => "none judged".into(),
    }
}

fn num(v: f64) -> String {
    format!("{v:.1}")
}

impl Chart {
    /// The chart of `history` (oldest first); `current`: the evaluation the page shows.
    /// None without evaluations.
    pub fn of(history: &[ScanSummary], current: Option<i64>) -> Option<Chart> {
        let (first, last) = (history.first()?, history.last()?);
        let times: Vec<i64> = history
            .iter()
            .map(|s| jitgate_api::time::parse(&s.time_utc).unwrap_or(0))
            .collect();
        let (t0, t1) = (
            times.iter().copied().min().unwrap_or(0),
            times.iter().copied().max().unwrap_or(0),
        );
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let n = history.len();
        let x_of = |i: usize| -> f64 {
            if t1 > t0 {
                LEFT + plot_w * ((times[i] - t0) as f64) / ((t1 - t0) as f64)
            } else if n > 1 {
                // Every evaluation at one time: spread them in order.
                LEFT + plot_w * (i as f64) / ((n - 1) as f64)
            } else {
                LEFT + plot_w / 2.0
            }
        };
        let y_of = |p: f64| TOP + plot_h * (100.0 - p.clamp(0.0, 100.0)) / 100.0;
        let points: Vec<Point> = history
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let pct = percent(s.compliance_percentage);
                let judged = s.compliant + s.non_compliant;
                Point {
                    scan_id: s.scan_id,
                    x: num(x_of(i)),
                    y: num(y_of(s.compliance_percentage.unwrap_or(0.0))),
                    judged: s.compliance_percentage.is_some(),
                    current: current == Some(s.scan_id),
                    label: format!(
                        "Evaluation {}, {}: {pct} compliant ({} of {judged})",
                        s.scan_id,
                        when_utc(&s.time_utc),
                        s.compliant
                    ),
                    time: when_utc(&s.time_utc),
                    percentage: pct,
                    compliant: s.compliant,
                    non_compliant: s.non_compliant,
                    unknown: s.unknown,
                    unmanaged: s.unmanaged,
                    reason: format!(
                        "{}{}",
                        s.reason.as_str(),
                        if s.probed { ", with a probe" } else { "" }
                    ),
                }
            })
            .collect();
        let judged: Vec<&Point> = points.iter().filter(|p| p.judged).collect();
        let line = if judged.len() > 1 {
            judged
                .iter()
                .map(|p| format!("{},{}", p.x, p.y))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            String::new()
        };
        let grid = [100.0, 75.0, 50.0, 25.0, 0.0]
            .iter()
            .map(|p| Grid {
                y: num(y_of(*p)),
                label: format!("{p:.0} %"),
            })
            .collect();
        let newest = percent(last.compliance_percentage);
        let description = format!(
            "{n} evaluation{} from {} to {}; compliance went from {} to {}{}.",
            if n == 1 { "" } else { "s" },
            when_utc(&first.time_utc),
            when_utc(&last.time_utc),
            percent(first.compliance_percentage),
            newest,
            match judged
                .iter()
                .map(|p| p.percentage.as_str())
                .collect::<Vec<_>>()
            {
                v if v.len() > 2 && v.len() <= 20 => format!(" (each: {})", v.join(", ")),
                _ => String::new(),
            }
        );
        Some(Chart {
            view_box: format!("0 0 {WIDTH} {HEIGHT}"),
            points,
            line,
            grid,
            left: num(LEFT),
            right: num(WIDTH - RIGHT),
            bottom: num(HEIGHT - 8.0),
            first: when_utc(&first.time_utc),
            last: when_utc(&last.time_utc),
            description,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api::ScanReason;

    fn scan(id: i64, minute: i64, compliant: i64, non_compliant: i64) -> ScanSummary {
        ScanSummary {
            scan_id: id,
            time_utc: jitgate_api::time::format(1_764_000_000_000 + minute * 60_000),
            reason: ScanReason::OnDemand,
            probed: false,
            compliant,
            non_compliant,
            unknown: 1,
            unmanaged: 0,
            compliance_percentage: ScanSummary::percentage(compliant, non_compliant),
        }
    }

    #[test]
    fn one_point_per_evaluation_placed_by_time_and_percentage() {
        let h = [scan(1, 0, 0, 0), scan(2, 10, 1, 1), scan(3, 20, 2, 0)];
        let c = Chart::of(&h, Some(2)).unwrap();
        assert_eq!(c.points.len(), 3);
        // x from the left margin to the right one, by time.
        assert_eq!(c.points[0].x, "48.0");
        assert_eq!(c.points[1].x, "376.0");
        assert_eq!(c.points[2].x, "704.0");
        // 100 % at the top, 50 % half way, nothing judged on the base line (hollow).
        assert_eq!(c.points[2].y, "12.0");
        assert_eq!(c.points[1].y, "108.0");
        assert!(!c.points[0].judged && c.points[0].y == "204.0");
        assert!(c.points[1].current && !c.points[2].current);
        assert_eq!(c.line, "376.0,108.0 704.0,12.0");
        assert!(c.points[1].label.ends_with(": 50.0 % compliant (1 of 2)"));
        assert!(c.description.starts_with("3 evaluations from "));
        assert!(c.description.contains("from none judged to 100.0 %"));
        assert!(Chart::of(&[], None).is_none());
        // Evaluations at one instant are spread in order; one alone is centred.
        let c = Chart::of(&[scan(1, 0, 1, 0), scan(2, 0, 1, 0)], None).unwrap();
        assert_eq!(
            (c.points[0].x.as_str(), c.points[1].x.as_str()),
            ("48.0", "704.0")
        );
        assert_eq!(
            Chart::of(&[scan(1, 0, 1, 0)], None).unwrap().points[0].x,
            "376.0"
        );
    }
}
