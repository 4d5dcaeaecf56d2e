//! `demo --portal`: the lab keeps running for a person's own browser. The portal is reached at
//! `https://127.0.0.1:PORT/` of this host through a forwarder whose connections are opened
//! inside the workstation namespace; the controller's public_url is that loopback origin, so
//! the portal's Origin check and the one-time link both match what the browser uses.

use std::time::Duration;

use jitgate_tests::agent::bin;
use jitgate_tests::fleet::WS_V4;

use crate::lab::{Lab, Made, Reach};
use crate::stop::{Step, fail, signalled};

/// The loopback URL answers over TLS with the controller's certificate, checked against its
/// CA (what the person's browser will do).
async fn answers(origin: &str, ca: &std::path::Path) -> Step {
    let pem = std::fs::read(ca).map_err(|e| fail(format!("{}: {e}", ca.display())))?;
    let cert = reqwest::Certificate::from_pem(&pem).map_err(fail)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(cert)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(fail)?;
    let r = client
        .get(format!("{origin}/auth/session"))
        .send()
        .await
        .map_err(|e| fail(format!("{origin} does not answer: {e}")))?;
    // Not signed in: 401 (anything but a server error means the portal is there).
    if r.status().is_server_error() {
        return Err(fail(format!("{origin}/auth/session: {}", r.status())));
    }
    Ok(())
}

pub fn run(rt: &tokio::runtime::Runtime, made: &mut Made) -> Step {
    println!("\x1b[1mjitgate demo --portal\x1b[0m — the lab runs until Ctrl-C");
    let lab = Lab::start(Reach::Loopback, rt, made)?;
    let vm = &lab.fleet.vms[0];
    rt.block_on(answers(&lab.origin, &lab.ctl.ca))?;
    let (link, until) = lab.login_link()?;
    let spki =
        jitgate_browser::spki_sha256_base64(&lab.ctl.state.join("tls/server.crt")).map_err(fail)?;
    println!(
        "lab: workstation namespace {ws} ({WS_V4}) runs the controller; vm-01 namespace {v1} \
         ({a1}) runs sshd and jit-agent, enforcing 22/tcp with XDP (pins under {pins}); vm-02 \
         namespace {v2} ({a2}) is registered without a policy (Not configured)",
        ws = lab.fleet.ws,
        v1 = vm.ns,
        a1 = vm.v4,
        pins = lab.agent.pin_dir.display(),
        v2 = lab.fleet.vms[1].ns,
        a2 = lab.fleet.vms[1].v4,
    );
    println!(
        "policy: resource group prod (vm-01), 22/tcp from 198.51.100.0/24, at most 1 hour, \
         sessions cut at expiry"
    );
    println!();
    println!("portal:        {}/", lab.origin);
    println!("ca:            {}", lab.ctl.ca.display());
    println!(
        "               trust this CA (curl --cacert FILE), or start Chromium with \
         --ignore-certificate-errors-spki-list={spki}"
    );
    println!("sign-in link:  {link}");
    println!("               works once, until {until}; signs in as link:alice, admin on *");
    println!(
        "new link:      {} --state-dir {} login-link --name alice --role admin",
        bin("jit-controller").display(),
        lab.ctl.state.display()
    );
    println!(
        "my ip:         the portal shows {WS_V4}: the forwarder opens its connections inside \
         the workstation namespace, so that is the address the server sees (and My IP grants it)"
    );
    println!("ssh once granted (from the workstation namespace):");
    println!("               {}", lab.ssh_command());
    println!(
        "remote host?   ssh -L {port}:127.0.0.1:{port} THIS-HOST, then open the same URL",
        port = lab.forward.as_ref().map(|f| f.port).unwrap_or_default()
    );
    println!();
    println!("waiting; Ctrl-C (SIGINT or SIGTERM) stops the lab and removes it");
    rt.block_on(signalled());
    made.note_processes();
    drop(lab);
    Ok(())
}
