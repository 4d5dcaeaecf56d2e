//! One event, rendered for one sink format. Every renderer starts from the same
//! [`crate::message::Message`] (wording) and applies only its format's markup and escaping.

pub mod email;
pub mod slack;
pub mod teams;
pub mod webhook;

/// `f(raw)` cut down (at `…`) until it is at most `limit` characters: escaping can lengthen
/// text, so limits are enforced on what is sent, never by cutting an escape in half.
pub(crate) fn fit(raw: &str, limit: usize, f: impl Fn(&str) -> String) -> String {
    let whole = f(raw);
    if whole.chars().count() <= limit {
        return whole;
    }
    let (mut lo, mut hi) = (0usize, raw.chars().count());
    let mut best = f("…");
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let candidate = f(&crate::text::truncate(raw, mid));
        if candidate.chars().count() <= limit {
            best = candidate;
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #[test]
    fn fit_never_splits_an_escape() {
        let s = "<".repeat(100);
        let out = super::fit(&s, 20, crate::text::slack);
        assert!(out.chars().count() <= 20, "{out}");
        assert!(
            out.ends_with('…') && out.starts_with("&lt;&lt;&lt;"),
            "{out}"
        );
        assert_eq!(out.matches("&lt;").count(), 4);
        assert_eq!(super::fit("short", 20, crate::text::slack), "short");
    }
}
