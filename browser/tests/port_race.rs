//! chromedriver given `--port=0` sometimes exits at once because the port it took on IPv6 is
//! taken on IPv4 ("IPv4 port not available"); a start tries again then, and only then.
//! One test in a binary of its own: it points `JIT_CHROMEDRIVER` at a wrapper script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use jitgate_browser::{Browser, BrowserOptions};

/// A wrapper that fails its first `fail` starts with `message`, then runs the real driver;
/// each start appends a line to `count`.
fn wrapper(
    dir: &Path,
    name: &str,
    fail: usize,
    message: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let count = dir.join(format!("{name}.count"));
    let script = dir.join(format!("{name}.sh"));
    let real = std::env::var("JIT_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho start >> '{count}'\nif [ $(wc -l < '{count}') -le {fail} ]; then\n\
             echo 'Starting ChromeDriver on port 0'\necho '{message}'\nexit 1\nfi\nexec '{real}' \"$@\"\n",
            count = count.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, count)
}

fn starts(count: &Path) -> usize {
    std::fs::read_to_string(count)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn use_driver(path: &Path) {
    // SAFETY: the only test in this binary, on a current-thread runtime: nothing else reads
    // the environment while it changes.
    unsafe { std::env::set_var("JIT_CHROMEDRIVER", path) };
}

#[tokio::test]
async fn a_lost_port_race_is_tried_again_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let (racy, racy_count) = wrapper(dir.path(), "racy", 2, "IPv4 port not available. Exiting...");
    let (broken, broken_count) = wrapper(dir.path(), "broken", 99, "something else went wrong");

    use_driver(&racy);
    let b = Browser::start(BrowserOptions::new("port_race"))
        .await
        .unwrap();
    b.goto("about:blank").await.unwrap();
    assert_eq!(
        starts(&racy_count),
        3,
        "two lost races, then the real driver"
    );
    drop(b);

    use_driver(&broken);
    let Err(e) = Browser::start(BrowserOptions::new("port_race_broken")).await else {
        panic!("a driver that fails for another reason started");
    };
    assert!(e.to_string().contains("something else went wrong"), "{e}");
    assert_eq!(starts(&broken_count), 1);
}
