//! The portal in a real browser inside the namespace lab: Chromium runs in the workstation
//! namespace (so the address the controller sees is the workstation's, as "My IP" will
//! show), against a controller on the workstation's lab address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;

use jitgate_browser::{Browser, BrowserOptions};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::require_root;

#[tokio::test]
async fn the_browser_runs_inside_the_workstation_namespace() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(0).unwrap();
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let origin = format!("https://{}", ctl.api);
    let ws = Fleet::ns_path(&fleet.ws);
    let b = Browser::start(
        BrowserOptions::new("portal_in_namespace")
            .netns(&ws)
            .trust(ctl.state.join("tls/server.crt"))
            .check_headers_of(&origin)
    )
    .await
    .unwrap();

    // chromedriver and every Chromium process live in the workstation's namespace.
    let want = std::fs::metadata(&ws).unwrap().ino();
    let procs = b.processes();
    assert!(
        procs.iter().filter(|(_, c)| c == "chromium").count() >= 2,
        "{procs:?}"
    );
    for (pid, comm) in &procs {
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue; // gone meanwhile
        };
        assert_eq!(ns.ino(), want, "{comm} ({pid}) is outside the namespace");
    }

    // The controller on the workstation's lab address answers the browser.
    b.expect_console_error("status of 401");
    b.goto(&format!("{origin}/auth/session")).await.unwrap();
    b.wait_for_text("Not signed in").await.unwrap();
    assert_eq!(b.url().await.unwrap(), format!("{origin}/auth/session"));
    b.checkpoint("not-signed-in").await;
    b.close().await.unwrap();
}
