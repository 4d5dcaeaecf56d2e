//! The portal in a real browser inside the namespace lab: Chromium runs in the workstation
//! namespace, against a controller on the workstation's lab address, and the portal shows
//! the workstation's address as the one the server sees ("My IP").
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
    let origin = format!("https://{WS_V4}:8443");
    let ctl = ControllerProc::start_with(&fleet.ws, WS_V4, &format!("public_url = \"{origin}\"\n"));
    assert_eq!(origin, format!("https://{}", ctl.api));
    let ws = Fleet::ns_path(&fleet.ws);
    let b = Browser::start(
        BrowserOptions::new("portal_in_namespace")
            .netns(&ws)
            .trust(ctl.state.join("tls/server.crt"))
            .check_headers_of(&origin),
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

    // Signed in with a one-time link (a real form POST from the portal's page), every page
    // says the address the server sees: the workstation's.
    let link = ctl.admin(&[
        "login-link",
        "--name",
        "alice",
        "--role",
        "admin",
        "--scope",
        "*",
    ]);
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{origin}/auth/link?t=")), "{url}");
    b.goto(url).await.unwrap();
    b.wait_for_text("This link signs you in as link:alice")
        .await
        .unwrap();
    b.checkpoint("one-time-link").await;
    b.click_button("Sign in").await.unwrap();
    b.wait_for_url(&format!("{origin}/jit")).await.unwrap();
    b.wait_for_text("Just-in-time VM access").await.unwrap();
    let seen = b.find("#my-address").await.unwrap().text().await.unwrap();
    assert_eq!(seen, WS_V4);
    b.checkpoint("jit-page").await;
    b.close().await.unwrap();
}
