//! The security headers every portal response carries (issue 16, "How it is built").

use std::collections::BTreeMap;

/// Response headers by lower-case name (repeated headers joined with a newline).
pub type Headers = BTreeMap<String, String>;

/// The headers of an HTTP response (reqwest's or hyper's `HeaderMap`), as [`Headers`].
pub fn headers_of(map: &http::HeaderMap) -> Headers {
    let mut h = Headers::new();
    for (k, v) in map {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        h.entry(k.as_str().to_ascii_lowercase())
            .and_modify(|e: &mut String| {
                e.push('\n');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    h
}

/// What a page with data must send.
#[derive(Clone, Debug)]
pub struct HeaderPolicy {
    /// `Strict-Transport-Security` with a `max-age` of at least 180 days.
    pub hsts: bool,
}

impl Default for HeaderPolicy {
    fn default() -> HeaderPolicy {
        HeaderPolicy { hsts: true }
    }
}

const HSTS_MIN_SECONDS: u64 = 180 * 24 * 3600;

/// What is missing or too weak in a page's headers, in words (empty: all present):
/// a Content-Security-Policy without inline script or style or `eval`, with `object-src`,
/// `frame-ancestors` and `base-uri` all `'none'`; `Cache-Control: no-store`;
/// `X-Content-Type-Options: nosniff`; `Referrer-Policy: no-referrer`; and HSTS if asked.
pub fn security_header_problems(h: &Headers, policy: &HeaderPolicy) -> Vec<String> {
    let mut p = vec![];
    let get = |name: &str| h.get(name).map(|v| v.trim().to_ascii_lowercase());
    match get("content-security-policy") {
        None => p.push("no Content-Security-Policy".to_string()),
        Some(csp) => {
            let directives: BTreeMap<&str, &str> = csp
                .split(';')
                .filter_map(|d| {
                    let d = d.trim();
                    let (name, value) = d.split_once(' ').unwrap_or((d, ""));
                    (!name.is_empty()).then_some((name, value.trim()))
                })
                .collect();
            for bad in [
                "'unsafe-inline'",
                "'unsafe-eval'",
                "'unsafe-hashes'",
                "data:",
                "*",
            ] {
                if directives
                    .values()
                    .any(|v| v.split_whitespace().any(|s| s == bad))
                {
                    p.push(format!("Content-Security-Policy allows {bad}: {csp}"));
                }
            }
            if !directives.contains_key("default-src") {
                p.push(format!(
                    "Content-Security-Policy without default-src: {csp}"
                ));
            }
            let object = directives
                .get("object-src")
                .or_else(|| directives.get("default-src"));
            if object != Some(&"'none'") {
                p.push(format!(
                    "Content-Security-Policy: object-src is not 'none': {csp}"
                ));
            }
            for d in ["frame-ancestors", "base-uri"] {
                if directives.get(d) != Some(&"'none'") {
                    p.push(format!("Content-Security-Policy: {d} is not 'none': {csp}"));
                }
            }
        }
    }
    if !get("cache-control").is_some_and(|v| v.split(',').any(|d| d.trim() == "no-store")) {
        p.push(format!(
            "Cache-Control is not no-store: {:?}",
            h.get("cache-control")
        ));
    }
    if get("x-content-type-options").as_deref() != Some("nosniff") {
        p.push("no X-Content-Type-Options: nosniff".into());
    }
    if get("referrer-policy").as_deref() != Some("no-referrer") {
        p.push(format!(
            "Referrer-Policy is not no-referrer: {:?}",
            h.get("referrer-policy")
        ));
    }
    if policy.hsts {
        let max_age = get("strict-transport-security").and_then(|v| {
            v.split(';')
                .filter_map(|d| d.trim().strip_prefix("max-age="))
                .find_map(|n| n.trim_matches('"').parse::<u64>().ok())
        });
        if max_age.is_none_or(|s| s < HSTS_MIN_SECONDS) {
            p.push(format!(
                "no Strict-Transport-Security with max-age >= {HSTS_MIN_SECONDS}: {:?}",
                h.get("strict-transport-security")
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const GOOD: &[(&str, &str)] = &[
        (
            "content-security-policy",
            "default-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("strict-transport-security", "max-age=31536000"),
    ];

    #[test]
    fn the_issue_s_headers_pass_and_each_gap_is_named() {
        assert_eq!(
            security_header_problems(&h(GOOD), &HeaderPolicy::default()),
            Vec::<String>::new()
        );
        // default-src 'none' covers object-src.
        let mut strict = h(GOOD);
        strict.insert(
            "content-security-policy".into(),
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
                .into(),
        );
        assert!(security_header_problems(&strict, &HeaderPolicy::default()).is_empty());
        for (name, value, why) in [
            (
                "content-security-policy",
                "default-src 'self' 'unsafe-inline'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
                "'unsafe-inline'",
            ),
            (
                "content-security-policy",
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
                "object-src",
            ),
            (
                "content-security-policy",
                "default-src 'self'; object-src 'none'; base-uri 'none'",
                "frame-ancestors",
            ),
            ("cache-control", "private", "no-store"),
            ("x-content-type-options", "", "nosniff"),
            ("referrer-policy", "same-origin", "no-referrer"),
            (
                "strict-transport-security",
                "max-age=60",
                "Strict-Transport",
            ),
        ] {
            let mut bad = h(GOOD);
            bad.insert(name.into(), value.into());
            let p = security_header_problems(&bad, &HeaderPolicy::default());
            assert!(p.iter().any(|m| m.contains(why)), "{name}: {value}: {p:?}");
        }
        let mut no_hsts = h(GOOD);
        no_hsts.remove("strict-transport-security");
        assert_eq!(
            security_header_problems(&no_hsts, &HeaderPolicy::default()).len(),
            1
        );
        assert!(security_header_problems(&no_hsts, &HeaderPolicy { hsts: false }).is_empty());
        assert_eq!(
            security_header_problems(&Headers::new(), &HeaderPolicy::default()).len(),
            5
        );
    }
}
