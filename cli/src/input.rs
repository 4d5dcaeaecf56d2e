//! What an operator types: durations, port specifications, source prefixes, and answers to
//! prompts. The formats themselves are parsed by `jitgate-api` and `jitgate-common`, the
//! parsers the controller uses: the CLI only adds the short notation for durations.

use std::io::{IsTerminal, Write};

use jitgate_api::{PortSpec, duration};
use jitgate_common::SourcePrefix;

use crate::exit::{Fail, R};

/// A duration in seconds (more than zero): ISO 8601 (`PT1H`, `P1D`) or the short notation
/// `30m`, `1h`, `2h30m`, `1d`, `45s` (the same components, lower case, without `P` and `T`).
pub fn seconds(s: &str) -> R<i64> {
    let bad = || {
        Fail::usage(format!(
            "{s:?} is not a duration such as 30m, 1h, 2h30m or PT1H"
        ))
    };
    let t = s.trim();
    let iso = if t.starts_with('P') {
        t.to_string()
    } else {
        short_to_iso(t).ok_or_else(bad)?
    };
    match duration::parse(&iso) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad()),
    }
}

/// A booked start as the API takes it (RFC 3339): an RFC 3339 time as given, or `+2h`,
/// `+30m`, `+1d` from now.
pub fn start_time(s: &str) -> R<String> {
    let t = s.trim();
    if let Some(rel) = t.strip_prefix('+') {
        let secs = seconds(rel)?;
        return Ok(jitgate_api::time::format(
            jitgate_api::time::now_ms() + secs * 1000,
        ));
    }
    jitgate_api::time::parse(t)
        .map(|_| t.to_string())
        .map_err(|_| {
            Fail::usage(format!(
                "{s:?} is not a time such as 2026-01-31T22:00:00Z or +2h"
            ))
        })
}

/// A duration as the API takes it (`PT2H30M`).
pub fn iso_duration(s: &str) -> R<String> {
    seconds(s).map(duration::format)
}

/// `2h30m` → `PT2H30M`, `1d` → `P1D`; `None` for anything but digits and `d`/`h`/`m`/`s`
/// (order, repetition and size are the ISO parser's to judge).
fn short_to_iso(t: &str) -> Option<String> {
    let (mut date, mut time) = (String::new(), String::new());
    let mut num = String::new();
    for c in t.chars() {
        match c {
            '0'..='9' => num.push(c),
            'd' | 'h' | 'm' | 's' if !num.is_empty() => {
                let part = if c == 'd' { &mut date } else { &mut time };
                part.push_str(&num);
                part.push(c.to_ascii_uppercase());
                num.clear();
            }
            _ => return None,
        }
    }
    if !num.is_empty() || (date.is_empty() && time.is_empty()) {
        return None;
    }
    Some(if time.is_empty() {
        format!("P{date}")
    } else {
        format!("P{date}T{time}")
    })
}

/// `22`, `22/tcp`, `53/udp`, `3389/*`.
pub fn port_spec(s: &str) -> R<PortSpec> {
    s.parse::<PortSpec>()
        .map_err(|e| Fail::usage(e.to_string()))
}

/// A source prefix (IPv4 or IPv6 CIDR, or `*` for any), checked before it is sent.
pub fn source(s: &str) -> R<()> {
    if s == "*" {
        return Ok(());
    }
    s.parse::<SourcePrefix>()
        .map(drop)
        .map_err(|e| Fail::usage(format!("source {s:?}: {e}")))
}

/// Asks on the terminal; refuses when stdin is not one (a script must give the flag).
pub fn ask(prompt: &str) -> R<String> {
    if !std::io::stdin().is_terminal() {
        return Err(Fail::usage(format!(
            "{prompt} is required (give it as a flag; stdin is not a terminal)"
        )));
    }
    eprint!("{prompt}: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Fail::usage(format!("reading {prompt}: {e}")))?;
    let line = line.trim().to_string();
    if line.is_empty() {
        return Err(Fail::usage(format!("{prompt} is required")));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, v) in [
            ("30m", 1800),
            ("1h", 3600),
            ("2h30m", 9000),
            ("90m", 5400),
            ("4s", 4),
            ("PT1H", 3600),
            ("1d", 86400),
            ("1d2h", 93600),
            (" 5m ", 300),
        ] {
            assert_eq!(seconds(s).ok(), Some(v), "{s}");
        }
        for s in [
            "",
            "1",
            "h",
            "1x",
            "PT",
            "0m",
            "PT0S",
            "-1h",
            "1H",
            "30m1h",
            "1h1h",
            "1.5h",
            "1w",
            "pt1h",
            "9999999999s",
        ] {
            assert!(seconds(s).is_err(), "{s}");
        }
        assert_eq!(iso_duration("2h30m").ok().as_deref(), Some("PT2H30M"));
        assert_eq!(iso_duration("1d").ok().as_deref(), Some("P1D"));
    }

    #[test]
    fn ports_and_sources() {
        use jitgate_api::ProtoSel;
        let p = |s: &str| port_spec(s).map(|x| (x.port.get(), x.protocol)).ok();
        assert_eq!(p("22"), Some((22, None)));
        assert_eq!(p("22/tcp"), Some((22, Some(ProtoSel::Tcp))));
        assert_eq!(p("3389/*"), Some((3389, Some(ProtoSel::Any))));
        assert!(port_spec("0").is_err() && port_spec("22/icmp").is_err());
        assert!(source("*").is_ok() && source("2001:db8::/32").is_ok());
        assert!(source("10.0.0.1/8").is_err() && source("x").is_err());
    }
}
