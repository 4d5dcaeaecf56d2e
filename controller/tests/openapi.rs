//! The OpenAPI file documents every route the router serves.

#[test]
fn openapi_lists_every_route() {
    let spec = include_str!("../openapi.yaml");
    let src = include_str!("../src/api.rs");
    let mut n = 0;
    for line in src.lines() {
        if let Some(idx) = line.find("\"/api/v1") {
            let rest = &line[idx + "\"/api/v1".len()..];
            let path = format!("/api/v1{}", rest.split('"').next().unwrap_or(""));
            assert!(
                spec.contains(&format!("  {path}:")),
                "{path} is served but not in openapi.yaml"
            );
            n += 1;
        }
    }
    assert!(n >= 10, "found only {n} routes");
}
