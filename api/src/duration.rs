//! ISO 8601 durations of days, hours, minutes and seconds (`PT5M`, `PT1H30M`, `P1D`): the one
//! parser of the project. Years, months and weeks are refused (their length is not fixed), so
//! are fractions, signs, empty components and components out of order.

/// Not an ISO 8601 duration this project accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ISO 8601 duration such as PT30M, PT3H or P1D")]
pub struct DurationError(pub String);

/// Parses a duration; returns whole seconds (never negative).
pub fn parse(s: &str) -> Result<i64, DurationError> {
    let bad = || DurationError(s.to_string());
    let rest = s.strip_prefix('P').ok_or_else(bad)?;
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut in_time = false;
    let mut num = String::new();
    let mut any = false;
    let mut last_rank = 0u8;
    for c in rest.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            // At most 9 digits per component: no overflow below.
            if num.len() > 9 {
                return Err(bad());
            }
            continue;
        }
        if c == 'T' {
            if in_time || !num.is_empty() {
                return Err(bad());
            }
            in_time = true;
            continue;
        }
        if num.is_empty() {
            return Err(bad());
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let (mult, rank) = match (in_time, c) {
            (false, 'D') => (86_400, 1),
            (true, 'H') => (3_600, 2),
            (true, 'M') => (60, 3),
            (true, 'S') => (1, 4),
            _ => return Err(bad()),
        };
        if rank <= last_rank {
            return Err(bad());
        }
        last_rank = rank;
        total = total.checked_add(n * mult).ok_or_else(bad)?;
        any = true;
    }
    if !num.is_empty() || !any || (in_time && last_rank < 2) {
        return Err(bad());
    }
    Ok(total)
}

/// Formats seconds as an ISO 8601 duration (`PT1H30M`, `P1D`; `PT0S` for zero or less).
pub fn format(secs: i64) -> String {
    if secs <= 0 {
        return "PT0S".into();
    }
    let (d, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let mut out = String::from("P");
    if d > 0 {
        out.push_str(&format!("{d}D"));
    }
    if h > 0 || m > 0 || s > 0 {
        out.push('T');
        for (n, unit) in [(h, 'H'), (m, 'M'), (s, 'S')] {
            if n > 0 {
                out.push_str(&format!("{n}{unit}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, v) in [
            ("PT5M", 300),
            ("PT3H", 10800),
            ("PT1H30M", 5400),
            ("P1D", 86400),
            ("P1DT1S", 86401),
            ("PT24H", 86400),
            ("PT0S", 0),
        ] {
            assert_eq!(parse(s), Ok(v), "{s}");
        }
        for s in [
            "",
            "P",
            "PT",
            "5M",
            "PT5",
            "PT5X",
            "P1H",
            "PTM",
            "PT1M1H",
            "P1W",
            "-PT5M",
            "PT5M ",
            "P1DT",
            "PT1.5H",
            "P1Y",
            "PT1234567890S",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
        assert_eq!(format(5400), "PT1H30M");
        assert_eq!(format(86400), "P1D");
        assert_eq!(format(90061), "P1DT1H1M1S");
        assert_eq!(format(0), "PT0S");
        for secs in [1, 59, 60, 3599, 3600, 86399, 86400, 1_000_000] {
            assert_eq!(parse(&format(secs)), Ok(secs));
        }
    }
}
