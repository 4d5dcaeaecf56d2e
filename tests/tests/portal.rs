//! The portal in a real browser inside the namespace lab: Chromium runs in the workstation
//! namespace, against a controller on the workstation's lab address, and the portal shows
//! the workstation's address as the one the server sees ("My IP"); and a person's request
//! flow, from sign-in to SSH through the agent's XDP program and Revoke, on every page type.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use jitgate_browser::{Browser, BrowserOptions};
use jitgate_oidc_testprovider::{CLI_CLIENT_ID, Setup, TestCa, TestProvider, WEB_CLIENT_ID};
use std::time::Duration;

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, Sshd, WS_V4};
use jitgate_tests::portal::{HOSTILE, admin_link, assert_nothing_injected, workstation_browser};
use jitgate_tests::{ok, require_root, wait_until};

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
    let b = workstation_browser("portal_in_namespace", &ws, &ctl, &origin).await;

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
    let link = admin_link(&ctl);
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

/// Polls the live section's `#status` until it reads `want` (the page is never reloaded:
/// htmx swaps the section in place).
async fn wait_for_status(b: &Browser, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = match b.find("#status").await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status still {now:?}, not {want:?}:\n{}",
            b.text().await.unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The whole request flow of a person in the portal, with a real agent enforcing it with XDP
/// and a real sshd behind it: sign in through the real OpenID provider, the VM lists, the request form, the live status
/// reaching Applied without a reload, SSH from the same workstation, the connection details
/// (the SSH command and the `.rdp` file, fetched with the page's session), Revoke from the
/// page, SSH refused.
#[tokio::test]
async fn request_ssh_and_revoke_in_the_browser() {
    if !require_root() {
        return;
    }
    let t0 = std::time::Instant::now();
    let fleet = Fleet::new(1).unwrap();
    let vm = &fleet.vms[0];
    let sshd = Sshd::start(&vm.ns).unwrap();
    let origin = format!("https://{WS_V4}:8443");
    // The OpenID provider people sign in with, on the workstation namespace's loopback:
    // reached there by the controller and by the browser.
    let ws = Fleet::ns_path(&fleet.ws);
    let ca = Arc::new(TestCa::new().unwrap());
    let op = TestProvider::start(
        ca.clone(),
        &Setup {
            web_redirect: format!("{origin}/auth/callback"),
            netns: Some(ws.clone()),
            ..Setup::default()
        },
    )
    .await
    .unwrap();
    let oidc = format!(
        "[oidc]\nissuer = \"{}\"\nclient_id = \"{WEB_CLIENT_ID}\"\nclient_secret_file = \"{}\"\n\
         cli_client_id = \"{CLI_CLIENT_ID}\"\nca_file = \"{}\"\n\
         scopes = [\"openid\", \"profile\", \"groups\"]\n\
         [[oidc.roles]]\ngroup = \"jit-admins\"\nrole = \"admin\"\nscope = \"*\"\n",
        op.issuer(),
        op.web_client_secret_file().display(),
        ca.ca_file().display()
    );
    // A notification sink that cannot be reached (nothing listens on that port): its page
    // shows the failures, and a test sent from it fails in words.
    let notify = format!(
        "[notify]\nallow_networks = [\"{WS_V4}/32\"]\ntimeout_seconds = 2\n\
         [[notify.sinks]]\nname = \"lab-hook\"\nformat = \"slack\"\n\
         target = \"https://{WS_V4}:9/services/lab\"\nevents = [\"access.applied\"]\n"
    );
    let ctl = ControllerProc::start_with(
        &fleet.ws,
        WS_V4,
        &format!("public_url = \"{origin}\"\n{notify}{oidc}"),
    );
    let token = ctl.add_vm("vm-01", vm.v4);
    // A second VM in a group without a policy: the "Not configured" tab.
    // Its owner is a hostile string: shown as text, nothing runs.
    ctl.admin(&["rg", "add", "staging", "--owner", HOSTILE]);
    ctl.admin(&[
        "vm",
        "add",
        "vm-02",
        "--resource-group",
        "staging",
        "--address",
        "203.0.113.9",
    ]);
    ok(
        ctl.jit(
            &fleet.ws,
            &args(
                "policy set --resource-group prod --port 22/tcp --port 3389/tcp \
                 --source 198.51.100.0/24 --max 3h --on-expiry cut",
            ),
        ),
        "policy set",
    );
    let agent = AgentProc::start_enrolled(
        &vm.ns,
        &args("--interface eth0 --protect 22/tcp:cut"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    let refused = |t: u32| {
        !sshd
            .ssh(&fleet.ws, vm.v4, "true", t)
            .unwrap()
            .status
            .success()
    };
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .ok(&["status"])
            .contains("22/tcp:cut")),
        "the policy did not reach the agent: {}",
        agent.ok(&["status"])
    );
    assert!(refused(2), "ssh open before any request");

    // Alice signs in through the provider's own form (she is in jit-admins: admin on *).
    let b = Browser::start(
        BrowserOptions::new("portal_request_ssh")
            .netns(&ws)
            .trust(ctl.state.join("tls/server.crt"))
            .trust(op.cert_file())
            .check_headers_of(&origin)
            .ignore(&format!("{}/favicon.ico", op.issuer())),
    )
    .await
    .unwrap();
    b.goto(&format!("{origin}/auth/login?return=/jit"))
        .await
        .unwrap();
    b.wait_for_url(&format!("{}/interaction/", op.issuer()))
        .await
        .unwrap();
    b.fill("input[name=login]", "alice").await.unwrap();
    b.fill("input[name=password]", "alice-password")
        .await
        .unwrap();
    b.click_button("Sign in").await.unwrap();
    b.wait_for_text("asks for").await.unwrap();
    b.click_button("Allow").await.unwrap();
    b.wait_for_url(&format!("{origin}/jit")).await.unwrap();
    b.wait_for_text("Signed in as alice").await.unwrap();

    // The tabs: vm-01 (policy, agent) is configured, vm-02 is not.
    b.wait_for_text("Configured (1)").await.unwrap();
    let text = b.text().await.unwrap();
    assert!(text.contains("Not configured (1)"), "{text}");
    let rows = b.find("table tbody").await.unwrap().text().await.unwrap();
    assert!(rows.contains("vm-01") && !rows.contains("vm-02"), "{rows}");
    b.checkpoint("jit-configured").await;
    b.click_link("Not configured (1)").await.unwrap();
    b.wait_for_text("Not configured VMs").await.unwrap();
    let rows = b.find("table tbody").await.unwrap().text().await.unwrap();
    assert!(rows.contains("vm-02") && !rows.contains("vm-01"), "{rows}");
    assert!(rows.contains(HOSTILE), "the owner as text: {rows}");
    assert_nothing_injected(&b).await;
    b.checkpoint("jit-not-configured").await;
    b.click_link("Unsupported (0)").await.unwrap();
    b.wait_for_text("Unsupported VMs").await.unwrap();
    b.checkpoint("jit-unsupported").await;
    b.click_link("Configured (1)").await.unwrap();
    b.wait_for_text("Configured VMs").await.unwrap();

    // The request form: SSH and RDP ports, My IP, 1 hour, a justification, a login name.
    b.click_link("Request access").await.unwrap();
    b.wait_for_text("Ports of vm-01").await.unwrap();
    for port in ["22", "3389"] {
        let cb = b
            .find(&format!("input[name=port][value=\"vm-01|{port}\"]"))
            .await
            .unwrap();
        if !cb.is_selected().await.unwrap() {
            cb.click().await.unwrap();
        }
    }
    let myip = b.find("input[name=source][value=myip]").await.unwrap();
    assert!(
        myip.is_selected().await.unwrap(),
        "My IP is not the default"
    );
    let text = b.text().await.unwrap();
    assert!(text.contains(&format!("My IP ({WS_V4})")), "{text}");
    b.click("#duration option[value=PT1H]").await.unwrap();
    b.fill_label("Justification (required)", HOSTILE)
        .await
        .unwrap();
    b.fill("#login", "alice").await.unwrap();
    b.checkpoint("request-form").await;
    b.click_button("Open ports").await.unwrap();
    let page = b
        .wait_for_url(&format!("{origin}/requests/"))
        .await
        .unwrap();

    // A mark in the document: if the page were reloaded it would be gone.
    b.execute("window.jitMark = 'same-document'; return null;", vec![])
        .await
        .unwrap();
    let applied = std::time::Instant::now();
    wait_for_status(&b, "Applied").await;
    eprintln!("request → Applied on the page in {:?}", applied.elapsed());
    let mark = b
        .execute("return window.jitMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, "same-document", "the page was reloaded");
    assert_eq!(b.url().await.unwrap(), page);

    // Connection details: exactly the command the test expects, and the .rdp file's two lines.
    let ssh = b.find("code.ssh").await.unwrap().text().await.unwrap();
    assert_eq!(ssh, format!("ssh -p 22 alice@{}", vm.v4));
    let rdp = b
        .client()
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const a = document.querySelector('a[download]');
             fetch(a.href, {credentials: 'same-origin'})
               .then(async r => done([r.status, r.headers.get('content-type'), await r.text()]))
               .catch(e => done(['error', String(e), '']));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rdp[0], 200, "{rdp}");
    assert_eq!(
        rdp[2],
        format!("full address:s:{}:3389\r\nusername:s:alice\r\n", vm.v4),
        "{rdp}"
    );
    let shown = b
        .execute(
            "return document.querySelector('dd.text').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, HOSTILE, "the justification as typed, as text");
    assert_nothing_injected(&b).await;
    b.checkpoint("applied").await;

    // Every other page type, checked the same way (headers, axe, console, CSP).
    for (path, text, step) in [
        ("/vms/vm-01", "Connect with SSH", "vm"),
        ("/vms/vm-01/requests", "Request history of", "vm-history"),
        ("/approvals", "Requests waiting for me", "approvals"),
        ("/activity", "Entries, newest first", "activity"),
        (
            "/vms/vm-02/connect?kind=ssh&login=alice",
            "ssh -p 22 alice@203.0.113.9",
            "connect-without-policy",
        ),
    ] {
        b.goto(&format!("{origin}{path}")).await.unwrap();
        b.wait_for_text(text).await.unwrap();
        assert_nothing_injected(&b).await;
        b.checkpoint(step).await;
    }
    b.goto(&page).await.unwrap();
    wait_for_status(&b, "Applied").await;

    // SSH from the same workstation works now.
    let o = sshd.ssh(&fleet.ws, vm.v4, "echo via-portal", 10).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "via-portal");

    // The session on the VM's connections page, under the request and its justification,
    // once the agent has delivered the kernel's record; the attempts refused before the
    // request behind the toggle, with the kernel's reason.
    let rid = page
        .rsplit("/requests/")
        .next()
        .and_then(|r| r.split(['?', '#']).next())
        .unwrap()
        .to_string();
    let connections = format!("{origin}/vms/vm-01/connections");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        b.goto(&connections).await.unwrap();
        let t = b.text().await.unwrap();
        if t.contains(&rid) {
            assert!(t.contains(HOSTILE), "the justification, as text: {t}");
            assert!(t.contains("\trequest\t"), "under the request: {t}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the SSH session never showed under request {rid}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_nothing_injected(&b).await;
    b.checkpoint("connections").await;
    b.click_link("Show the denied attempts too").await.unwrap();
    b.wait_for_text("denied: ").await.unwrap();
    b.checkpoint("connections-denied").await;
    // The fleet, the VM's agent and its delivered records, verified in the page.
    b.goto(&format!("{origin}/fleet")).await.unwrap();
    b.wait_for_text("Agents, by VM name").await.unwrap();
    b.checkpoint("fleet").await;
    b.goto(&format!("{origin}/vms/vm-01/agent")).await.unwrap();
    b.wait_for_text("Delivered audit records, newest first")
        .await
        .unwrap();
    b.click_button("Verify this agent's records").await.unwrap();
    b.wait_for_text("Verified: records").await.unwrap();
    b.checkpoint("fleet-agent").await;
    // Notifications (admins): the sink from controller.toml with its state; a test sent
    // from the sink's page fails in words (nothing listens there).
    b.goto(&format!("{origin}/notifications")).await.unwrap();
    b.wait_for_text("Sinks, by name").await.unwrap();
    b.wait_for_text("lab-hook").await.unwrap();
    assert_nothing_injected(&b).await;
    b.checkpoint("notifications").await;
    b.goto(&format!("{origin}/notifications/lab-hook"))
        .await
        .unwrap();
    b.wait_for_text("Notification sink lab-hook").await.unwrap();
    b.click_button("Send a test").await.unwrap();
    b.wait_for_text("Test not delivered").await.unwrap();
    assert_nothing_injected(&b).await;
    b.checkpoint("notification-sink").await;
    b.goto(&page).await.unwrap();
    wait_for_status(&b, "Applied").await;

    // Revoke from the page: the status says so and SSH is refused again.
    b.click_button("Revoke").await.unwrap();
    wait_for_status(&b, "Revoked").await;
    b.checkpoint("revoked").await;
    assert!(
        wait_until(Duration::from_secs(20), || refused(2)),
        "ssh still works after Revoke"
    );

    // The policy editor: staging's policy with an approval stage, set through the form. An
    // invalid port first: refused beside its field, focused, nothing saved; then the
    // preview (what changes, the VMs it affects, the activity entry), Save, and the API
    // returns the same policy.
    b.goto(&format!("{origin}/groups/staging/policy"))
        .await
        .unwrap();
    b.wait_for_text("Resource group staging has no policy")
        .await
        .unwrap();
    b.fill("#p0-number", "70000").await.unwrap();
    b.fill("#p0-sources", "198.51.100.0/24").await.unwrap();
    b.fill("#p0-max", "PT2H").await.unwrap();
    b.click("#p0-approval").await.unwrap();
    b.fill("#p0-s0-approvers", "group:jit-admins")
        .await
        .unwrap();
    // A refused form is answered 400 (the form with its errors), which Chromium logs; the
    // next checkpoint accepts exactly that.
    b.expect_console_error(
        "policy/preview - Failed to load resource: the server responded with a status of 400",
    );
    b.click_button("Preview the changes").await.unwrap();
    b.wait_for_text("port 70000 is invalid").await.unwrap();
    let focused = b
        .execute("return document.activeElement.id;", vec![])
        .await
        .unwrap();
    assert_eq!(focused, "p0-number", "the first field in error is focused");
    assert!(
        !ctl.jit(&fleet.ws, &args("policy show --resource-group staging"))
            .status
            .success()
    );
    assert_nothing_injected(&b).await;
    b.checkpoint("policy-invalid").await;
    b.fill("#p0-number", "22").await.unwrap();
    b.click_button("Preview the changes").await.unwrap();
    b.wait_for_text("The activity entry saving writes")
        .await
        .unwrap();
    let preview = b.find("#preview").await.unwrap().text().await.unwrap();
    for want in [
        "port 22/TCP added",
        "1 VM(s) of resource group staging take this policy: vm-02",
        "Update JIT Network Access Policy",
    ] {
        assert!(preview.contains(want), "{want:?} in {preview}");
    }
    assert_nothing_injected(&b).await;
    b.checkpoint("policy-preview").await;
    b.click_button("Save this policy").await.unwrap();
    b.wait_for_text("Saved: the policy is in force")
        .await
        .unwrap();
    b.checkpoint("policy-saved").await;
    let got = ctl.jit_json(
        &fleet.ws,
        &args("--json policy show --resource-group staging"),
    );
    assert_eq!(
        got["ports"],
        serde_json::json!([{"number": 22, "protocol": "TCP",
            "allowedSourceAddressPrefix": "198.51.100.0/24",
            "maxRequestAccessDuration": "PT2H", "onExpiry": "keep",
            "approval": {"stages": [{"approvers": ["group:jit-admins"], "required": 1}],
                "allowSelfApproval": false, "allowEmergency": false, "timeout": "PT1H"}}]),
        "{got}"
    );

    // The activity log filtered to vm-01's initiates through the form and exported: the CSV
    // is the API's for the same filter. Then an entry is changed in the database behind the
    // controller's back: verifying the whole log from the page names it.
    const INITIATE: &str = "Initiate JIT Network Access";
    b.goto(&format!("{origin}/activity")).await.unwrap();
    b.wait_for_text("Entries, newest first").await.unwrap();
    b.fill("input[name=vm]", "vm-01").await.unwrap();
    b.click(&format!(
        "select[name=operation] option[value=\"{INITIATE}\"]"
    ))
    .await
    .unwrap();
    b.click_button("Filter").await.unwrap();
    b.wait_for_url(&format!("{origin}/activity?"))
        .await
        .unwrap();
    let csv = b
        .client()
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const a = document.querySelector('a[href*=\"/activity/export\"][href*=\"format=csv\"]');
             fetch(a.href, {credentials: 'same-origin'})
               .then(async r => done([r.status, await r.text()]))
               .catch(e => done(['error', String(e)]));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(csv[0], 200, "{csv}");
    let csv = csv[1].as_str().unwrap_or_default().to_string();
    let api = ctl.jit(
        &fleet.ws,
        &["audit", "--vm", "vm-01", "--operation", INITIATE, "--csv"],
    );
    assert!(api.status.success(), "{api:?}");
    assert_eq!(
        csv.trim_end(),
        String::from_utf8_lossy(&api.stdout).trim_end(),
        "the portal's export is the API's"
    );
    let entries: Vec<&str> = csv.lines().skip(1).collect();
    assert!(
        !entries.is_empty(),
        "the portal's request is an initiate of vm-01: {csv}"
    );
    for e in &entries {
        assert!(e.contains("vm-01") && e.contains(INITIATE), "{csv}");
    }
    assert_nothing_injected(&b).await;
    b.checkpoint("activity-filtered").await;

    let seq = tamper_initiate(&ctl, "vm-01").await;
    b.goto(&format!("{origin}/activity")).await.unwrap();
    b.click_button("Verify the whole log").await.unwrap();
    b.wait_for_text_within(
        &format!("Verification failed at entry {seq}"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_nothing_injected(&b).await;
    b.checkpoint("activity-tampered").await;

    b.close().await.unwrap();
    eprintln!("request_ssh_and_revoke_in_the_browser: {:?}", t0.elapsed());
}

/// Changes the caller of `vm`'s first initiate in the controller's SQLite file, as someone
/// with the file but not the signing key would; returns the entry's seq.
async fn tamper_initiate(ctl: &ControllerProc, vm: &str) -> i64 {
    use sqlx::Connection;
    use std::str::FromStr;
    let db = std::fs::read_dir(&ctl.state)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .expect("the controller's SQLite file");
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
        .unwrap()
        .busy_timeout(Duration::from_secs(10));
    let mut c = sqlx::sqlite::SqliteConnection::connect_with(&opts)
        .await
        .unwrap();
    let (seq,): (i64,) = sqlx::query_as(
        "SELECT MIN(seq) FROM activity WHERE vm = ?1 AND operation = 'Initiate JIT Network Access'",
    )
    .bind(vm)
    .fetch_one(&mut c)
    .await
    .unwrap();
    let changed = sqlx::query("UPDATE activity SET caller = 'someone-else' WHERE seq = ?1")
        .bind(seq)
        .execute(&mut c)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1);
    c.close().await.unwrap();
    seq
}
