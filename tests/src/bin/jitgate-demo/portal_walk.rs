//! The portal part of the demo: a person's way through the web portal in a real Chromium
//! inside the workstation namespace (so "My IP" is the workstation's address), with a
//! screenshot of each step: the one-time sign-in link, the Just-in-time VM access page, the
//! request form, the request page reaching Applied without a reload, SSH, Revoke, history.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jitgate_browser::{Browser, BrowserOptions};
use jitgate_tests::fleet::{Fleet, WS_V4};

use crate::lab::{Lab, Made};
use crate::step;
use crate::stop::{Step, fail};

/// Saves a screenshot of the page as it is, says what it shows, and fails on anything the
/// browser reported (console errors, Content-Security-Policy violations, failed loads).
async fn shot(b: &Browser, name: &str, what: &str) -> Step<PathBuf> {
    let path = b.screenshot(name).await.map_err(fail)?;
    let problems = b.problems().await.map_err(fail)?;
    if !problems.is_empty() {
        return Err(fail(format!(
            "the browser reported problems at {name}:\n  {}",
            problems.join("\n  ")
        )));
    }
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    println!("  [{file}] {what}");
    Ok(path)
}

/// The text of the element matching `css` (waiting for it).
async fn text_of(b: &Browser, css: &str) -> Step<String> {
    let e = b.find(css).await.map_err(fail)?;
    Ok(e.text().await.unwrap_or_default())
}

/// The live section's status, polled until it reads `want` (htmx swaps it in place).
async fn wait_for_status(b: &Browser, want: &str, limit: Duration) -> Step {
    let end = Instant::now() + limit;
    loop {
        // Between swaps the element may be missing for a moment.
        let now = text_of(b, "#status").await.unwrap_or_default();
        if now == want {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(fail(format!(
                "the request's status is still {now:?}, not {want:?}, after {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs a blocking call (a child process) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub async fn run(lab: &Lab, made: &mut Made, first: u32) -> Step {
    let origin = &lab.origin;
    let vm = &lab.fleet.vms[0];
    step(
        first,
        "the portal, in Chromium inside the workstation namespace",
    );
    let t0 = Instant::now();
    let mut opts = BrowserOptions::new("portal")
        .netns(Fleet::ns_path(&lab.fleet.ws))
        .trust(lab.ctl.state.join("tls/server.crt"))
        .check_headers_of(origin);
    // Tall enough for the whole request form in one screenshot.
    opts.window = (1280, 1280);
    let b = Browser::start(opts).await.map_err(fail)?;
    made.pids
        .extend(b.processes().into_iter().map(|(pid, _)| pid));
    println!(
        "headless Chromium started in {:.1} s; screenshots go to {}/",
        t0.elapsed().as_secs_f64(),
        b.screenshot_dir().display()
    );

    let (link, until) = blocking(|| lab.login_link())?;
    println!(
        "$ jit-controller login-link --name alice --role admin --scope '*'   (valid once, until {until})"
    );
    b.goto(&link).await.map_err(fail)?;
    b.wait_for_text("This link signs you in as link:alice")
        .await
        .map_err(fail)?;
    shot(
        &b,
        "sign-in-link",
        "the one-time link: opening it changes nothing; its Sign in button (a POST from this \
         origin) signs in as link:alice, admin on *",
    )
    .await?;

    b.click_button("Sign in").await.map_err(fail)?;
    b.wait_for_url(&format!("{origin}/jit"))
        .await
        .map_err(fail)?;
    b.wait_for_text("Configured (1)").await.map_err(fail)?;
    let seen = text_of(&b, "#my-address").await?;
    shot(
        &b,
        "jit-configured",
        &format!(
            "Just-in-time VM access, Configured: vm-01 (policy on prod, agent online); \
             every page says who you are and the address the server sees: {seen}"
        ),
    )
    .await?;
    b.click_link("Not configured (1)").await.map_err(fail)?;
    b.wait_for_text("Not configured VMs").await.map_err(fail)?;
    shot(
        &b,
        "jit-not-configured",
        "Not configured: vm-02 (no policy applies; the recommended ports are listed)",
    )
    .await?;
    b.click_link("Configured (1)").await.map_err(fail)?;
    b.wait_for_text("Configured VMs").await.map_err(fail)?;

    b.click_link("Request access").await.map_err(fail)?;
    b.wait_for_text("Ports of vm-01").await.map_err(fail)?;
    let port = b
        .find("input[name=port][value=\"vm-01|22\"]")
        .await
        .map_err(fail)?;
    if !port.is_selected().await.map_err(fail)? {
        port.click().await.map_err(fail)?;
    }
    let myip = b
        .find("input[name=source][value=myip]")
        .await
        .map_err(fail)?;
    if !myip.is_selected().await.map_err(fail)? {
        myip.click().await.map_err(fail)?;
    }
    b.click("#duration option[value=PT1H]")
        .await
        .map_err(fail)?;
    b.fill(
        "#justification",
        "demo: renew the TLS certificate (CHG-1235)",
    )
    .await
    .map_err(fail)?;
    b.fill("#login", "root").await.map_err(fail)?;
    shot(
        &b,
        "request-form",
        &format!(
            "Request access: port 22/tcp of vm-01, source My IP ({WS_V4}), 1 hour, a \
             justification, the login name for the connection details"
        ),
    )
    .await?;

    let t_req = Instant::now();
    b.click_button("Open ports").await.map_err(fail)?;
    b.wait_for_url(&format!("{origin}/requests/"))
        .await
        .map_err(fail)?;
    let status = text_of(&b, "#status").await?;
    shot(
        &b,
        "request-page",
        &format!("the request's page right after Open ports: status {status}"),
    )
    .await?;
    wait_for_status(&b, "Applied", Duration::from_secs(60)).await?;
    let applied = t_req.elapsed();
    let ssh = text_of(&b, "code.ssh").await?;
    shot(
        &b,
        "request-applied",
        &format!(
            "Applied, {:.1} s after Open ports, without a reload (the live section refreshes \
             every 2 s): the window, the time left, and the SSH command: {ssh}",
            applied.as_secs_f64()
        ),
    )
    .await?;

    let (ok, out) = blocking(|| lab.ssh("echo \"hello from $(hostname), via the portal\"", 10))?;
    if !ok {
        return Err(fail(format!("SSH after Applied failed: {out}")));
    }
    println!("$ ssh root@{} ...   (from the workstation)\n{out}", vm.v4);

    b.click_button("Revoke").await.map_err(fail)?;
    wait_for_status(&b, "Revoked", Duration::from_secs(60)).await?;
    shot(
        &b,
        "revoked",
        "Revoke pressed: status Revoked (reason UserRequested); the agent closed the port",
    )
    .await?;
    let refused = blocking(|| {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match lab.ssh("true", 2) {
                Ok((false, _)) => return Ok(true),
                Err(e) => return Err(e),
                Ok((true, _)) if Instant::now() > end => return Ok(false),
                Ok((true, _)) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })?;
    if !refused {
        return Err(fail("SSH still works 20 s after Revoke"));
    }
    println!("$ ssh root@{} true\n→ refused: revoked", vm.v4);

    b.goto(&format!("{origin}/vms/vm-01/requests"))
        .await
        .map_err(fail)?;
    b.wait_for_text("Request history of").await.map_err(fail)?;
    shot(
        &b,
        "history",
        "vm-01's request history, newest first: the portal's request and the earlier `jit \
         connect` one, both Revoked (by the button, and at the end of its window)",
    )
    .await?;
    let dir = b.screenshot_dir().to_path_buf();
    b.close().await.map_err(fail)?;
    println!(
        "portal walk: {:.1} s; screenshots in {}/",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}
