//! The web portal over real HTTPS (docs/portal.md): people signed in through a real OpenID
//! provider, pages rendered from the same services as the API, every form checked for
//! Origin and CSRF, hostile strings shown as text, security headers on every response.
//! (Chromium drives the same pages in the root tests; these run anywhere.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/portal_client.rs"]
mod portal_client;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use std::time::Duration;

use common::Harness;
use common::agent::{Agent, enroll};
use common::lab::{HOSTILE, apply_next_grant, lab};
use jitgate_controller::authz::Caller;
use jitgate_proto::AgentMsg;
use portal_client::{Portal, check_headers, request_id, set_cookie};
use reqwest::StatusCode;
use rp_support::free_port;
use serde_json::json;

#[tokio::test]
async fn jit_page_request_form_live_status_connect_and_revoke() {
    let p = Portal::start().await;
    let (mut agent, creds) = lab(&p.h).await;

    // Without a session: to sign-in, and back to the page asked for.
    let r = p.get("", "/jit?tab=unsupported").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.location(),
        "/auth/login?return=%2Fjit%3Ftab%3Dunsupported"
    );

    let alice = p.sign_in("alice").await;
    // The three tabs: each VM in exactly one.
    let configured = p.get(&alice, "/jit").await;
    assert_eq!(configured.status, StatusCode::OK, "{}", configured.body);
    assert!(configured.headers["cache-control"] == "no-store");
    let body = &configured.body;
    assert!(body.contains("Signed in as <strong>"), "{body}");
    assert!(body.contains("admin on *"), "{body}");
    assert!(
        body.contains(">127.0.0.1</strong>"),
        "the address as seen: {body}"
    );
    assert!(
        body.contains("Configured (1)")
            && body.contains("Not configured (2)")
            && body.contains("Unsupported (1)"),
        "{body}"
    );
    assert!(body.contains("/vms/web2\">web2<"), "{body}");
    let not = p.get(&alice, "/jit?tab=not-configured").await.body;
    assert!(
        not.contains(">db1<") && not.contains(">tools1<") && !not.contains(">web2<"),
        "{not}"
    );
    // The hostile owner is text.
    assert!(
        !not.contains("<script>alert(1)") && !not.contains("<img src=x"),
        "{not}"
    );
    assert!(
        not.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{not}"
    );
    let unsupported = p.get(&alice, "/jit?tab=unsupported").await.body;
    assert!(
        unsupported.contains(">web1<") && unsupported.contains("no agent is enrolled"),
        "{unsupported}"
    );
    let bad = p.get(&alice, "/jit?tab=everything").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("not-configured"), "{}", bad.body);

    // Several VMs at once: chosen on the Configured tab, one form with each VM's ports.
    assert!(body.contains("form=\"select-vms\""), "{body}");
    let both = p.get(&alice, "/request?vm=web2&vm=web1").await.body;
    assert!(
        both.contains("Ports of web2") && both.contains("Ports of web1"),
        "{both}"
    );

    // The form of Connect with SSH: 22 preselected, the policy's lengths only.
    let form = p.get(&alice, "/request?vm=web2&connect=ssh").await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(
        form.body.contains("value=\"web2|22\" checked"),
        "{}",
        form.body
    );
    assert!(
        !form.body.contains("value=\"web2|3389\" checked"),
        "{}",
        form.body
    );
    assert!(
        form.body.contains("PT3H") && !form.body.contains("value=\"PT8H\""),
        "{}",
        form.body
    );
    let csrf = form.csrf();

    // Refused before the service: no justification, a bad range, an injected login name.
    let before = p.h.snapshot().await;
    let r = p
        .post(
            &alice,
            "/request",
            &p.public,
            &[
                ("csrf", &csrf),
                ("vm", "web2"),
                ("port", "web2|22"),
                ("source", "range"),
                ("range", "203.0.113.0/33"),
                ("duration", "PT1H"),
                ("when", "now"),
                ("justification", ""),
                ("login", "root; rm -rf ~"),
                ("connect", "ssh"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for words in [
        "is not an IP range",
        "say why you need access",
        "is not allowed",
    ] {
        assert!(r.body.contains(words), "{words}: {}", r.body);
    }
    assert_eq!(
        p.h.snapshot().await,
        before,
        "a refused form writes nothing"
    );

    // Denied by the policy (3389 allows 203.0.113.0/24 only): the reason beside the port.
    let r = p
        .post(
            &alice,
            "/request",
            &p.public,
            &[
                ("csrf", &csrf),
                ("vm", "web2"),
                ("port", "web2|3389"),
                ("source", "range"),
                ("range", "198.51.100.0/24"),
                ("duration", "PT1H"),
                ("when", "now"),
                ("justification", "rdp"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("was denied by the policy"), "{}", r.body);
    assert!(r.body.contains("class=\"field-error\""), "{}", r.body);

    // Open port 22 with My IP for an hour, a hostile justification.
    let r = p
        .post(
            &alice,
            "/request",
            &p.public,
            &[
                ("csrf", &csrf),
                ("vm", "web2"),
                ("port", "web2|22"),
                ("source", "myip"),
                ("duration", "PT1H"),
                ("when", "now"),
                ("justification", HOSTILE),
                ("login", "alice"),
                ("connect", "ssh"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let location = r.location().to_string();
    assert!(location.ends_with("?connect=ssh&login=alice"), "{location}");
    let id = request_id(&location);
    let page = p.get(&alice, &location).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("<span id=\"status\">Initiated</span>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("hx-trigger=\"every 2s\""),
        "live while Initiated"
    );
    assert!(!page.body.contains("<script>alert") && !page.body.contains("<img src=x"));
    assert!(
        page.body.contains("&#60;img src=x onerror=alert(2)&#62;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("127.0.0.1/32"), "My IP: {}", page.body);

    // The agent applies it: the fragment the page polls shows Applied and the command.
    apply_next_grant(&mut agent, &creds).await;
    let live = format!("/requests/{id}/live?connect=ssh&login=alice");
    let fragment = p.until(&alice, &live, ">Applied</span>").await;
    assert!(!fragment.contains("<html"), "a fragment, not a page");
    assert!(
        fragment.contains("<code class=\"ssh\">ssh -p 22 alice@192.0.2.12</code>"),
        "{fragment}"
    );

    // Revoke needs the form's CSRF token and our Origin; each refusal changes nothing.
    let revoke = format!("/requests/{id}/revoke");
    let other = p.sign_in("bob").await;
    let before = p.h.snapshot().await;
    let r = p.post(&alice, &revoke, &p.public, &[("csrf", "0")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("CSRF"), "{}", r.body);
    let r = p
        .post(&alice, &revoke, "https://evil.example", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("Origin"), "{}", r.body);
    let r = p.post(&other, &revoke, &p.public, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "another session's token");
    assert_eq!(p.h.snapshot().await, before);
    let r = p.post(&alice, &revoke, &p.public, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let page = p.get(&alice, &format!("/requests/{id}")).await;
    assert!(
        page.body.contains("<span id=\"status\">Revoked</span>"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("hx-trigger"), "no polling once ended");

    // The Configured tab counts it among the approved requests of the last 7 days.
    let jit = p.get(&alice, "/jit").await.body;
    assert!(
        jit.contains("<td>1</td>") && jit.contains("<td>alice</td>"),
        "{jit}"
    );

    // History of the VM, filtered.
    let hist = p.get(&alice, "/vms/web2/requests?status=Revoked").await;
    assert!(hist.body.contains(&id), "{}", hist.body);
    let hist = p.get(&alice, "/vms/web2/requests?status=Applied").await;
    assert!(!hist.body.contains(&id), "{}", hist.body);

    // Sign-out ends the session on the server.
    let r = p
        .post(&alice, "/auth/logout", &p.public, &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = p.get(&alice, "/jit").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn approvals_inbox_approve_deny_and_rdp_file() {
    let p = Portal::start().await;
    let (mut agent, creds) = lab(&p.h).await;
    let alice = p.sign_in("alice").await;
    let bob = p.sign_in("bob").await;

    // Bob sees only what his scopes (rg:prod, and rg:dev as a reader) cover; filters narrow
    // it in the database.
    let jit = p.get(&bob, "/jit").await.body;
    assert!(
        jit.contains("Configured (1)")
            && jit.contains("Not configured (1)")
            && jit.contains("Unsupported (1)"),
        "{jit}"
    );
    let all = p.get(&alice, "/jit?tab=not-configured&q=B1").await.body;
    assert!(all.contains(">db1<") && !all.contains(">tools1<"), "{all}");
    let none = p.get(&alice, "/jit?tab=not-configured&q=%25").await.body;
    assert!(
        none.contains("Not configured (0)"),
        "a % is a character, not a wildcard: {none}"
    );
    let owner = p
        .get(
            &alice,
            "/jit?tab=not-configured&owner=dev-team%40example.com",
        )
        .await
        .body;
    assert!(
        owner.contains(">db1<") && !owner.contains(">tools1<"),
        "{owner}"
    );

    // Bob (requester on rg:prod) asks for RDP from the office range.
    let form = p.get(&bob, "/request?vm=web2&connect=rdp").await;
    assert!(form.body.contains("requester on rg:prod"), "{}", form.body);
    let bob_csrf = form.csrf();
    let ask = |just: &'static str| {
        [
            ("csrf", bob_csrf.clone()),
            ("vm", "web2".into()),
            ("port", "web2|3389".into()),
            ("source", "range".into()),
            ("range", "203.0.113.0/24".into()),
            ("duration", "PT1H".into()),
            ("when", "now".into()),
            ("justification", just.into()),
            ("login", "bob".into()),
            ("connect", "rdp".into()),
        ]
    };
    let fields = ask("patch night");
    let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = p.post(&bob, "/request", &p.public, &f).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let first = request_id(r.location());
    let page = p.get(&bob, r.location()).await;
    assert!(
        page.body.contains(">PendingApproval</span>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("group:jit-admins"),
        "who still has to approve: {}",
        page.body
    );

    // Bob sees nothing to decide; Alice sees it with everything she needs.
    let inbox = p.get(&bob, "/approvals").await;
    assert!(
        inbox.body.contains("Nothing waits for your decision"),
        "{}",
        inbox.body
    );
    let inbox = p.get(&alice, "/approvals").await;
    assert!(
        inbox.body.contains(&first) && inbox.body.contains("patch night"),
        "{}",
        inbox.body
    );
    assert!(
        inbox.body.contains("web2 3389/TCP from 203.0.113.0/24"),
        "{}",
        inbox.body
    );
    let csrf = inbox.csrf();

    // Bob cannot approve his own with a forged form; Alice approves.
    let r = p
        .post(
            &bob,
            &format!("/requests/{first}/approve"),
            &p.public,
            &[("csrf", &bob_csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = p
        .post(
            &alice,
            &format!("/requests/{first}/approve"),
            &p.public,
            &[("csrf", &csrf), ("reason", "ok")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    apply_next_grant(&mut agent, &creds).await;
    let fragment = p
        .until(
            &bob,
            &format!("/requests/{first}/live?connect=rdp&login=bob"),
            ">Applied</span>",
        )
        .await;
    assert!(fragment.contains("Download the .rdp file"), "{fragment}");
    // The .rdp file: exactly the address and the user.
    let r = p
        .get(
            &bob,
            &format!("/requests/{first}/rdp?vm=web2&port=3389&login=bob"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/x-rdp");
    assert_eq!(
        r.body,
        "full address:s:192.0.2.12:3389\r\nusername:s:bob\r\n"
    );
    // A crafted user name adds no line.
    let r = p
        .get(
            &bob,
            &format!("/requests/{first}/rdp?vm=web2&port=3389&login=bob%0Aalternate%20shell:s:cmd"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // A second request, denied with a reason that Bob then reads.
    let fields = ask("again");
    let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = p.post(&bob, "/request", &p.public, &f).await;
    let second = request_id(r.location());
    let r = p
        .post(
            &alice,
            &format!("/requests/{second}/deny"),
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a denial needs a reason");
    let r = p
        .post(
            &alice,
            &format!("/requests/{second}/deny"),
            &p.public,
            &[("csrf", &csrf), ("reason", "<b>not tonight</b>")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let page = p.get(&bob, &format!("/requests/{second}")).await;
    assert!(
        page.body.contains(">Revoked</span>") || page.body.contains(">Denied</span>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("&#60;b&#62;not tonight&#60;/b&#62;"),
        "{}",
        page.body
    );
}

/// `jit-controller login-link`: a link that works once, within its time, by a POST from this
/// site; its session (`link:NAME`) uses the portal but never approves; both ends logged.
#[tokio::test]
async fn one_time_link_signs_in_once_and_never_approves() {
    let port = free_port();
    let public = format!("https://127.0.0.1:{port}");
    let h = Harness::with_config(|c| {
        c.listen = format!("127.0.0.1:{port}");
        c.public_url = Some(public.clone());
    })
    .await;
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
                "maxRequestAccessDuration": "PT3H",
                "approval": {"stages": [{"approvers": ["token:boss"], "required": 1}]}}]),
    )
    .await;
    let browser = common::browser_for(&h.dir);

    // The command prints the link (JSON for scripts); a bad role changes nothing.
    // Asynchronous: the controller under test runs on this test's runtime, and a blocking
    // wait would stall its transactions while the command waits for the database.
    let cli = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
            .arg("--state-dir")
            .arg(&h.dir.0)
            .args(args)
            .output()
    };
    let bad = cli(&["login-link", "--name", "demo", "--role", "root"])
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("root"),
        "{bad:?}"
    );
    let out = cli(&["--json", "login-link", "--name", "demo", "--role", "admin"])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = v["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{public}/auth/link?t=jitlink_")),
        "{url}"
    );

    // Opening it only shows what it is, as many times as you like.
    for _ in 0..2 {
        let r = browser.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        check_headers(r.headers());
        let body = r.text().await.unwrap();
        assert!(
            body.contains("link:demo") && body.contains("admin on *"),
            "{body}"
        );
    }
    let secret = url.split("t=").nth(1).unwrap().to_string();
    let redeem = |origin: &'static str| {
        browser
            .post(format!("{public}/auth/link"))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("t={secret}"))
            .send()
    };
    // From another site: refused, and the link still works afterwards.
    let r = redeem("https://evil.example").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let origin: &'static str = Box::leak(public.clone().into_boxed_str());
    let r = redeem(origin).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/jit");
    let cookie = set_cookie(r.headers(), "__Host-jitgate-session");
    // Once only.
    let r = redeem(origin).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("already used"));

    let get = |path: &str| {
        browser
            .get(format!("{public}{path}"))
            .header("cookie", &cookie)
            .send()
    };
    let r = get("/jit").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<strong>demo</strong>") && body.contains("admin on *"),
        "{body}"
    );

    // A pending request made with a token: the link's session, though admin, cannot approve.
    let requester = h.token("ann", jitgate_api::Role::Requester, "*").await;
    let (_, req) = h
        .initiate(
            &requester,
            common::one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
            ),
        )
        .await;
    let id = req["id"].as_str().unwrap();
    assert_eq!(req["status"], "PendingApproval", "{req}");
    let inbox = get("/approvals").await.unwrap().text().await.unwrap();
    let csrf = {
        let at = inbox.find("name=\"csrf\" value=\"").unwrap() + 19;
        inbox[at..at + 64].to_string()
    };
    let r = browser
        .post(format!("{public}/requests/{id}/approve"))
        .header("cookie", &cookie)
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, v) = h.get(&format!("/api/v1/requests/{id}"), &requester).await;
    assert_eq!(v["status"], "PendingApproval");

    // Both ends of the link are in the activity log.
    let (_, log) = h.get("/api/v1/activityLog", &h.admin).await;
    let ops: Vec<&str> = log
        .as_array()
        .or_else(|| log["value"].as_array())
        .unwrap()
        .iter()
        .filter_map(|e| e["operation"].as_str())
        .collect();
    assert!(
        ops.contains(&"Create Login Link") && ops.contains(&"Redeem Login Link"),
        "{ops:?}"
    );
}

/// The request form's check as it is typed (`POST /request/check`, what htmx sends): the
/// same field checks and policy reasons as a submission, each in its field's element; the
/// Origin and CSRF checks of every form; and nothing recorded.
#[tokio::test]
async fn request_form_check_says_why_and_records_nothing() {
    let p = Portal::start().await;
    let _agent = lab(&p.h).await;
    let bob = p.sign_in("bob").await;
    let csrf = p.get(&bob, "/request?vm=web2&connect=rdp").await.csrf();
    let check = |vm: &'static str, range: &'static str, login: &'static str| {
        [
            ("csrf", csrf.clone()),
            ("vm", vm.into()),
            ("port", format!("{vm}|3389")),
            ("source", "range".into()),
            ("range", range.into()),
            ("duration", "PT1H".into()),
            ("when", "now".into()),
            ("justification", String::new()),
            ("login", login.into()),
        ]
    };
    let post = |fields: [(&'static str, String); 9], origin: String| {
        let p = &p;
        let bob = bob.clone();
        async move {
            let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            p.post(&bob, "/request/check", &origin, &f).await
        }
    };

    // A range outside the policy's for RDP: the reason in the port's element, the other
    // elements empty (they clear what an earlier check said); no word about the
    // justification still being typed.
    let r = post(check("web2", "198.51.100.0/24", "bob"), p.public.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(
            "id=\"port-errors-web2-3389\" hx-swap-oob=\"true\"><p class=\"field-error\">source \
             198.51.100.0/24 is not inside the allowed source prefixes of port 3389/TCP"
        ),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(
            "<div class=\"port-errors\" id=\"port-errors-web2-22\" hx-swap-oob=\"true\"></div>"
        ),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("id=\"range-error\" hx-swap-oob=\"true\"></p>"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("justification"), "{}", r.body);

    // Bad fields: each where it belongs, as text.
    let r = post(check("web2", "203.0.113.0/33", "<b>x"), p.public.clone()).await;
    assert!(r.body.contains("is not an IP range"), "{}", r.body);
    assert!(
        r.body.contains("&#60;b&#62;x") && !r.body.contains("<b>x"),
        "{}",
        r.body
    );
    // A VM outside Bob's rights to request (he reads rg:dev): refused in words.
    let r = post(check("db1", "203.0.113.0/24", "bob"), p.public.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("id=\"form-check\""), "{}", r.body);
    assert!(
        r.body
            .contains("may not do this on VM db1: it needs role requester"),
        "the refusal is said: {}",
        r.body
    );

    // Another origin (even with the token): refused.
    let r = post(
        check("web2", "203.0.113.0/24", "bob"),
        "https://evil.example".into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // Checks record nothing: no request for web2 or db1.
    for vm in ["web2", "db1"] {
        let (s, v) =
            p.h.get(
                &format!("/api/v1/virtualMachines/{vm}/requests"),
                &p.h.admin,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["value"], json!([]), "{v}");
    }
}

/// The most new connections per grant, asked on the form: the policy's limit named beside
/// its port, a bad number refused next to the field (as typed and on submission), a number
/// above the policy's refused in words, and nothing recorded for either; a number within it
/// is the request's limit.
#[tokio::test]
async fn request_form_asks_for_a_connection_limit() {
    let p = Portal::start().await;
    // The lab's agent speaks level 1, which cannot enforce a limit: its VM's requests with
    // one are refused (below, in words); web2 gets an agent of the current level after.
    let (old, creds) = lab(&p.h).await;
    p.h.put_rg_policy(
        "prod",
        json!([
            {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
             "maxRequestAccessDuration": "PT3H", "maxConnections": 2},
        ]),
    )
    .await;
    let alice = p.sign_in("alice").await;
    let form = p.get(&alice, "/request?vm=web2&connect=ssh").await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(
        form.body.contains("2 new connections per grant")
            && form.body.contains("name=\"connections\""),
        "{}",
        form.body
    );
    let csrf = form.csrf();
    let fields = |connections: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("vm", "web2".to_string()),
            ("port", "web2|22".into()),
            ("source", "myip".into()),
            ("duration", "PT1H".into()),
            ("when", "now".into()),
            ("justification", "limited".into()),
            ("connections", connections.into()),
        ]
    };
    let post = |path: &'static str, fields: Vec<(&'static str, String)>| {
        let p = &p;
        let alice = alice.clone();
        async move {
            let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            p.post(&alice, path, &p.public, &f).await
        }
    };

    // As typed: a bad number beside the field, one above the policy's beside the port.
    let r = post("/request/check", fields("0")).await;
    assert!(
        r.body.contains(
            "id=\"connections-error\" hx-swap-oob=\"true\">&#34;0&#34; is not a number of connections"
        ),
        "{}",
        r.body
    );
    let r = post("/request/check", fields("3")).await;
    assert!(
        r.body
            .contains("maxConnections 3 exceeds port 22&#39;s maximum of 2")
            && r.body
                .contains("id=\"connections-error\" hx-swap-oob=\"true\"></p>"),
        "{}",
        r.body
    );

    // Submitted: refused, in words, and nothing recorded.
    let before = p.h.snapshot().await;
    let r = post("/request", fields("<b>many")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body
            .contains("&#34;&#60;b&#62;many&#34; is not a number of connections")
            && !r.body.contains("<b>many"),
        "{}",
        r.body
    );
    let r = post("/request", fields("3")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body
            .contains("maxConnections 3 exceeds port 22&#39;s maximum of 2"),
        "{}",
        r.body
    );
    let r = post("/request", fields("1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body
            .contains("its agent does not support connection limits (protocol level 1, needs 5)"),
        "{}",
        r.body
    );
    assert_eq!(p.h.snapshot().await, before, "refused forms write nothing");

    // Within the policy's, to an agent that enforces it: the request's limit.
    drop(old);
    let mut agent = Agent::connect(&creds).await;
    agent
        .handshake_at(&creds, 0, jitgate_proto::PROTOCOL_LEVEL)
        .await;
    let r = post("/request", fields("1")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let id = request_id(r.location());
    let (s, v) = p.h.get(&format!("/api/v1/requests/{id}"), &p.h.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["maxConnections"], 1,
        "{v}"
    );
    let page = p.get(&alice, &format!("/requests/{id}")).await.body;
    assert!(page.contains("at most 1 per grant"), "{page}");
}

/// Connect from the page of a VM that no policy covers: the details at once (no request to
/// make), built from validated parts only; a VM under a policy goes through the request
/// form, and its `.rdp` file only comes from an open request.
#[tokio::test]
async fn connect_without_a_policy_shows_the_details_at_once() {
    let p = Portal::start().await;
    let _agent = lab(&p.h).await;
    let alice = p.sign_in("alice").await;

    let vm = p.get(&alice, "/vms/tools1").await.body;
    assert!(
        vm.contains("href=\"/vms/tools1/connect?kind=ssh\"")
            && vm.contains("href=\"/vms/tools1/connect?kind=rdp\""),
        "{vm}"
    );
    let ssh = p
        .get(&alice, "/vms/tools1/connect?kind=ssh&login=alice")
        .await;
    assert_eq!(ssh.status, StatusCode::OK, "{}", ssh.body);
    assert!(
        ssh.body
            .contains("<code class=\"ssh\">ssh -p 22 alice@198.51.100.7</code>"),
        "{}",
        ssh.body
    );
    assert!(ssh.body.contains("no request is needed"), "{}", ssh.body);
    let rdp = p
        .get(&alice, "/vms/tools1/connect?kind=rdp&login=alice")
        .await
        .body;
    assert!(
        rdp.contains("href=\"/vms/tools1/rdp?login=alice\" download"),
        "{rdp}"
    );
    let file = p.get(&alice, "/vms/tools1/rdp?login=alice").await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(file.headers["content-type"], "application/x-rdp");
    assert_eq!(
        file.body,
        "full address:s:198.51.100.7:3389\r\nusername:s:alice\r\n"
    );

    // A crafted login name: refused in words, in no command or file.
    let bad = p
        .get(
            &alice,
            "/vms/tools1/connect?kind=ssh&login=a%3B%20rm%20-rf%20~",
        )
        .await
        .body;
    assert!(
        bad.contains("<code class=\"ssh\">ssh -p 22 198.51.100.7</code>"),
        "{bad}"
    );
    assert!(!bad.contains("a; rm -rf ~@"), "{bad}");
    let r = p
        .get(
            &alice,
            "/vms/tools1/rdp?login=x%0D%0Adrivestoredirect%3As%3A*",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(!r.body.contains("full address"), "{}", r.body);
    let r = p.get(&alice, "/vms/tools1/connect?kind=telnet").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // Under a policy: the request form first; no .rdp file without a request.
    let r = p.get(&alice, "/vms/web2/connect?kind=rdp").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/request?vm=web2&connect=rdp");
    let r = p.get(&alice, "/vms/web2/rdp").await;
    assert!(r.status.is_client_error(), "{}", r.status);
    assert!(r.body.contains("request access"), "{}", r.body);

    // Outside the person's rights: refused.
    let bob = p.sign_in("bob").await;
    let r = p.get(&bob, "/vms/tools1/connect?kind=ssh").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

/// The JIT page's tab counts (cached per scopes and filters under the inventory generation)
/// are current after every kind of write that moves a VM between tabs: a VM added, a policy
/// created or deleted, an agent enrolled, detached, re-attached or revoked.
#[tokio::test]
async fn jit_tab_counts_follow_every_change() {
    use jitgate_controller::inventory::{JitFilter, JitTab};
    let h = Harness::new().await;
    h.fixture().await;
    let dev = Caller::token(
        "dev",
        "dev-reader",
        jitgate_api::Role::Reader,
        jitgate_api::Scope::ResourceGroup("dev".into()),
        [127, 0, 0, 1].into(),
    );
    let web = JitFilter {
        name_part: "WEB".into(),
        ..JitFilter::default()
    };
    // [configured, not configured, unsupported], for everything / dev's scope / names with
    // "web"; each read twice, so the second comes from the cache (unless `settling`: a
    // status report may be applied in between).
    let read = async |h: &Harness, settling: bool| {
        let mut out = Vec::new();
        for (caller, f) in [
            (&Caller::local(), &JitFilter::default()),
            (&dev, &JitFilter::default()),
            (&Caller::local(), &web),
        ] {
            let mut two = Vec::new();
            for _ in 0..2 {
                let list = h
                    .app()
                    .inventory
                    .jit_list(caller, f, JitTab::Configured, "", 50)
                    .await
                    .unwrap();
                two.push(list.counts);
            }
            if !settling {
                assert_eq!(two[0], two[1]);
            }
            out.push(two[1]);
        }
        out
    };
    let counts = async |h: &Harness| read(h, false).await;
    assert_eq!(counts(&h).await, [[0, 3, 0], [0, 1, 0], [0, 2, 0]]);
    let ports = json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
                        "maxRequestAccessDuration": "PT1H"}]);
    h.put_rg_policy("prod", ports.clone()).await;
    assert_eq!(counts(&h).await, [[0, 1, 2], [0, 1, 0], [0, 0, 2]]);
    // A replaced policy moves nothing.
    h.put_rg_policy("prod", ports.clone()).await;
    assert_eq!(counts(&h).await, [[0, 1, 2], [0, 1, 0], [0, 0, 2]]);
    h.put_vm_policy("db1", ports.clone()).await;
    assert_eq!(counts(&h).await, [[0, 0, 3], [0, 0, 1], [0, 0, 2]]);
    let creds = enroll(&h, "web2").await;
    assert_eq!(counts(&h).await, [[1, 0, 2], [0, 0, 1], [1, 0, 1]]);

    // A status report without an attached interface: enforcement detached, unsupported;
    // attached again, configured.
    let mut agent = Agent::connect(&creds).await;
    agent.handshake(&creds, 0).await;
    let status = |interfaces: Vec<(String, String)>| {
        AgentMsg::Status(Box::new(jitgate_proto::message::StatusReport {
            heartbeat: jitgate_proto::message::Heartbeat {
                interfaces,
                protected: vec![],
                listening: vec![],
                active_grants: 0,
                audit_head: "ab".repeat(32),
                audit_seq: 0,
            },
            addresses: vec![],
            problems: vec![],
            agent_unix_ms: jitgate_api::time::now_ms(),
        }))
    };
    let until = async |h: &Harness, want: [usize; 3]| {
        for _ in 0..100 {
            if read(h, true).await[0] == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the counts never became {want:?}: {:?}", counts(h).await);
    };
    agent.send(&status(vec![])).await;
    until(&h, [0, 0, 3]).await;
    agent
        .send(&status(vec![("eth0".into(), "native".into())]))
        .await;
    until(&h, [1, 0, 2]).await;

    h.app()
        .fleet
        .revoke_agents(&Caller::local(), "web2")
        .await
        .unwrap();
    assert_eq!(counts(&h).await, [[0, 0, 3], [0, 0, 1], [0, 0, 2]]);
    h.app()
        .policies
        .delete(
            &Caller::local(),
            jitgate_controller::policies::Target::Vm("db1"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(counts(&h).await, [[0, 1, 2], [0, 1, 0], [0, 0, 2]]);
    h.app()
        .inventory
        .add_vm(
            &Caller::local(),
            "web3",
            "prod",
            &["192.0.2.13".parse().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(counts(&h).await, [[0, 1, 3], [0, 1, 0], [0, 0, 3]]);
}

/// The Configured tab's "approved requests of the last 7 days": each approved request once
/// per VM (also with several ports on it), pending and denied ones not, and the newest one's
/// requester and time.
#[tokio::test]
async fn recent_access_counts_approved_requests_once() {
    use jitgate_api::Role;
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([
            {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
             "maxRequestAccessDuration": "PT3H"},
            {"number": 443, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
             "maxRequestAccessDuration": "PT3H"},
            {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
             "maxRequestAccessDuration": "PT3H",
             "approval": {"stages": [{"approvers": ["group:jit-admins"], "required": 1}]}}
        ]),
    )
    .await;
    let since = jitgate_api::time::now_ms() - 1000;
    let port = |n: u16| json!({"number": n, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"});
    let made = async |who: &str, body: serde_json::Value, status: &str| {
        let t = h.token(who, Role::Requester, "*").await;
        let (st, v) = h.initiate(&t, body).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["status"], status, "{v}");
        // Distinct request times.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // alice: web1 on two ports, one request.
    made(
        "alice",
        json!({"virtualMachines": [{"id": "web1", "ports": [port(22), port(443)]}],
               "justification": "ticket INC-1"}),
        "Initiated",
    )
    .await;
    // bob: pending approval; carol: denied (a port without a policy rule).
    made(
        "bob",
        common::one_port("web1", port(3389)),
        "PendingApproval",
    )
    .await;
    made("carol", common::one_port("web1", port(8080)), "Denied").await;
    // dave: web1 and web2 in one request.
    made(
        "dave",
        json!({"virtualMachines": [{"id": "web1", "ports": [port(22)]},
                                   {"id": "web2", "ports": [port(22)]}],
               "justification": "ticket INC-2"}),
        "Initiated",
    )
    .await;
    made(
        "erin",
        common::one_port("web2", port(3389)),
        "PendingApproval",
    )
    .await;
    let vms: Vec<String> = ["web1", "web2", "db1"].map(String::from).to_vec();
    let recent = h.app().lifecycle.recent_access(since, &vms).await.unwrap();
    let web1 = &recent["web1"];
    assert_eq!((web1.approved, web1.last_user.as_str()), (2, "dave"));
    let web2 = &recent["web2"];
    assert_eq!((web2.approved, web2.last_user.as_str()), (1, "dave"));
    assert_eq!(web1.last_ms, web2.last_ms, "one request");
    assert!(web1.last_ms >= since, "{}", web1.last_ms);
    assert!(!recent.contains_key("db1"), "{recent:?}");
    // Outside the window: nothing.
    let later = jitgate_api::time::now_ms() + 1000;
    assert!(
        h.app()
            .lifecycle
            .recent_access(later, &vms)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The Configured tab says since when an agent is offline: from the moment its channel
/// closes, with the time it was last heard from.
#[tokio::test]
async fn configured_tab_says_since_when_an_agent_is_offline() {
    let p = Portal::start().await;
    let (agent, _creds) = lab(&p.h).await;
    let alice = p.sign_in("alice").await;
    let online = p.get(&alice, "/jit").await.body;
    assert!(online.contains("<td>online</td>"), "{online}");
    let before = jitgate_api::time::now_ms();
    drop(agent);
    let page = p.until(&alice, "/jit", "offline since ").await;
    let at = page.find("offline since ").unwrap() + "offline since ".len();
    let shown = &page[at..at + 20];
    assert!(shown.ends_with(" UTC"), "{shown}");
    // The time shown is the agent's last contact: at most a minute before it went.
    let ms = jitgate_api::time::parse(&format!("{}:00Z", shown[..16].replace(' ', "T"))).unwrap();
    assert!(ms <= before && ms >= before - 120_000, "{shown}");
    assert!(
        page.contains("Configured (1)"),
        "an offline agent's VM stays configured: {page}"
    );
}
