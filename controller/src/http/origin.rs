//! Whether a state-changing browser request (a portal form) came from this site.
//!
//! A browser sends `Origin` with a form POST, but as `null` when the page's referrer policy
//! is `no-referrer` (the Fetch standard, "serializing a request origin"), and the portal's
//! pages send `Referrer-Policy: no-referrer`: the header alone refuses the portal's own forms
//! (seen in Chromium). Fetch Metadata closes the gap: `Sec-Fetch-Site` is set by the browser
//! alone (no page can set a `Sec-` header) and is `same-origin` only for a request made by a
//! page of this very origin; another port or scheme of the same host is `same-site`, an
//! opaque origin (a `data:` page, a sandboxed frame) `cross-site`.

use axum::http::{HeaderMap, header};

/// Whether `headers` show a request from origin `ours` (`https://host[:port]`): `Origin` is
/// `ours`, or it is `null` or absent and `Sec-Fetch-Site` is `same-origin`.
pub fn from_this_site(headers: &HeaderMap, ours: &str) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match get(header::ORIGIN.as_str()) {
        Some(o) if o == ours => true,
        Some("null") | None => get("sec-fetch-site") == Some("same-origin"),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn own_origin_or_the_browser_s_same_origin_word() {
        let ours = "https://jit.example.net";
        assert!(from_this_site(&h(&[("origin", ours)]), ours));
        // Chromium's own form POST from a no-referrer page.
        assert!(from_this_site(
            &h(&[("origin", "null"), ("sec-fetch-site", "same-origin")]),
            ours
        ));
        assert!(from_this_site(
            &h(&[("sec-fetch-site", "same-origin")]),
            ours
        ));
        for refused in [
            h(&[]),
            h(&[("origin", "null")]),
            h(&[("origin", "null"), ("sec-fetch-site", "same-site")]),
            h(&[("origin", "null"), ("sec-fetch-site", "cross-site")]),
            h(&[("origin", "https://evil.example")]),
            // A foreign Origin is refused whatever else the request claims.
            h(&[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin"),
            ]),
            h(&[("origin", "https://jit.example.net:8443")]),
            h(&[("origin", "http://jit.example.net")]),
        ] {
            assert!(!from_this_site(&refused, ours), "{refused:?}");
        }
    }
}
