//! Times on the wire: RFC 3339 / ISO 8601 in UTC with milliseconds (`2026-11-26T23:00:00.000Z`);
//! inside, milliseconds since the Unix epoch.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Not an RFC 3339 time with an offset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an ISO 8601 UTC time such as 2026-01-31T17:00:00Z ({reason})")]
pub struct TimeError {
    pub input: String,
    pub reason: String,
}

/// Milliseconds since the Unix epoch, UTC, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 UTC with milliseconds; the decimal number itself if out of range.
pub fn format(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            millis
        ),
        Err(_) => ms.to_string(),
    }
}

/// Parses an RFC 3339 time with an offset (`Z` or `+hh:mm`) into milliseconds.
pub fn parse(s: &str) -> Result<i64, TimeError> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| TimeError {
        input: s.to_string(),
        reason: e.to_string(),
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = parse("2026-01-31T17:00:00Z").unwrap();
        assert_eq!(format(t), "2026-01-31T17:00:00.000Z");
        assert_eq!(parse("2026-01-31T18:00:00.5+01:00"), Ok(t + 500));
        assert!(parse("2026-01-31 17:00").is_err());
        assert!(parse("yesterday").is_err());
        assert!(now_ms() > t);
    }
}
