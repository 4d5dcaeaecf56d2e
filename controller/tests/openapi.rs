//! The OpenAPI file documents every route the routers serve, and documents no other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

#[test]
fn openapi_lists_every_route() {
    let spec = include_str!("../openapi.yaml");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut served = BTreeSet::new();
    for e in std::fs::read_dir(&dir).expect("src/http") {
        let path = e.expect("entry").path();
        // The portal's pages (src/http/portal/) are not the JSON API.
        if path.is_dir() {
            continue;
        }
        let src = std::fs::read_to_string(path).expect("read");
        for line in src.lines() {
            if let Some(idx) = line.find("\"/api/v1") {
                let rest = &line[idx + "\"/api/v1".len()..];
                let path = format!("/api/v1{}", rest.split('"').next().unwrap_or(""));
                assert!(
                    spec.contains(&format!("  {path}:")),
                    "{path} is served but not in openapi.yaml"
                );
                served.insert(path);
            }
        }
    }
    assert!(served.len() >= 10, "found only {} routes", served.len());
    for line in spec.lines() {
        if let Some(p) = line.strip_prefix("  /api/v1") {
            let path = format!("/api/v1{}", p.trim_end_matches(':'));
            assert!(
                served.contains(&path),
                "{path} is documented but not served"
            );
        }
    }
}
