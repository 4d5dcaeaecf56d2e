//! The portal's policy editor over real HTTPS, people signed in through the real OpenID
//! provider: an admin sets a resource group's policy with an approval stage through the
//! form (preview, then save) and the API returns the same policy; each invalid input is
//! refused next to its field and changes nothing; a stale preview is refused with the new
//! one; a reader sees the policy read-only and may not post; CSRF and Origin are checked;
//! hostile strings (an approver's OIDC subject, text typed into a field) stay text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/portal_client.rs"]
mod portal_client;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use common::lab::HOSTILE;
use portal_client::{Page, Portal};
use reqwest::StatusCode;
use serde_json::{Value, json};

const GROUP_API: &str = "/api/v1/resourceGroups/prod/jitNetworkAccessPolicies/default";
/// An approver whose OIDC subject is markup (ASCII without spaces: a valid subject).
const HOSTILE_APPROVER: &str = "oidc:https://idp.example#\"><script>alert(9)</script>";

/// The valid form of the test: SSH from two ranges, two hours, cut at the end, one
/// approval stage.
fn valid() -> Vec<(String, String)> {
    [
        ("ports", "1"),
        ("p0-number", "22"),
        ("p0-protocol", "TCP"),
        ("p0-sources", "203.0.113.0/24\r\n198.51.100.0/24"),
        ("p0-max", "PT2H"),
        ("p0-expiry", "cut"),
        ("p0-approval", "on"),
        ("p0-stages", "1"),
        ("p0-s0-approvers", "group:jit-admins\r\ntoken:ops"),
        ("p0-s0-required", "1"),
        ("p0-auto", "PT15M"),
        ("p0-timeout", "PT30M"),
        ("action", "preview"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `fields` with `name` set to `value`.
fn with(mut fields: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    match fields.iter_mut().find(|(k, _)| k == name) {
        Some(f) => f.1 = value.to_string(),
        None => fields.push((name.to_string(), value.to_string())),
    }
    fields
}

async fn post(p: &Portal, cookie: &str, path: &str, csrf: &str, f: &[(String, String)]) -> Page {
    let mut all: Vec<(&str, &str)> = vec![("csrf", csrf)];
    all.extend(f.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    p.post(cookie, path, &p.public, &all).await
}

/// The value of the hidden input `name` (unescaped as a browser would).
fn hidden(body: &str, name: &str) -> String {
    let mark = format!("name=\"{name}\" value=\"");
    let at = body
        .find(&mark)
        .unwrap_or_else(|| panic!("no {name}: {body}"))
        + mark.len();
    let raw = &body[at..at + body[at..].find('"').unwrap()];
    raw.replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&#38;", "&")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The text of the error element of field `id`.
fn error_of(body: &str, id: &str) -> String {
    let mark = format!("id=\"{id}-error\">");
    let at = body
        .find(&mark)
        .unwrap_or_else(|| panic!("no {id}-error: {body}"))
        + mark.len();
    body[at..at + body[at..].find("</p>").unwrap()].to_string()
}

/// Every activity entry, and the stored group policy: what a refusal must leave alone.
async fn state(p: &Portal) -> (i64, Value) {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM activity")
        .fetch_one(p.h.app().db.pool())
        .await
        .unwrap();
    let (_, policy) = p.h.get(GROUP_API, &p.h.admin).await;
    (n, policy)
}

fn no_markup(page: &Page) {
    for s in ["<script>alert", "<img src=x", "\"><script"] {
        assert!(!page.body.contains(s), "{s:?} as markup: {}", page.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_editor() {
    let p = Portal::start().await;
    p.h.fixture().await;
    // web2 has a policy of its own: the group's policy will not apply to it.
    p.h.put_vm_policy(
        "web2",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
            "maxRequestAccessDuration": "PT1H"}]),
    )
    .await;
    let alice = p.sign_in("alice").await; // admin on *
    let bob = p.sign_in("bob").await; // requester on rg:prod, reader on rg:dev

    // The VM page links to the editors.
    let vm = p.get(&alice, "/vms/web1").await;
    assert!(vm.body.contains("href=\"/vms/web1/policy\""), "{}", vm.body);
    assert!(vm.body.contains("href=\"/groups/prod/policy\""));

    // The group has no policy: the form starts with one blank port.
    let page = p.get(&alice, "/groups/prod/policy").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Resource group prod has no policy"));
    assert!(
        page.body
            .contains("<label for=\"p0-number\">Port number</label>")
    );
    assert!(
        page.body
            .contains("aria-describedby=\"p0-number-hint p0-number-error\"")
    );
    let csrf = page.csrf();
    let (n0, none) = state(&p).await;
    assert_eq!(none["error"]["code"], "PolicyNotFound", "{none}");

    // Add a port and a stage (buttons of the form, no JavaScript): nothing is judged.
    let r = post(
        &p,
        &alice,
        "/groups/prod/policy/preview",
        &csrf,
        &with(valid(), "action", "add-port"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("id=\"p1-number\""));
    assert!(!r.body.contains("id=\"preview\""));
    let r = post(
        &p,
        &alice,
        "/groups/prod/policy/preview",
        &csrf,
        &with(valid(), "action", "add-stage-0"),
    )
    .await;
    assert!(r.body.contains("id=\"p0-s1-approvers\""), "{}", r.body);

    // Preview: what changes, the VMs it affects, the activity entry; nothing written.
    let r = post(&p, &alice, "/groups/prod/policy/preview", &csrf, &valid()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for want in [
        "<li>port 22/TCP added</li>",
        "1 VM(s) of resource group prod take this policy: <a href=\"/vms/web1\">web1</a>.",
        "Not affected: 1 VM(s) with a policy of their own",
        "<a href=\"/vms/web2/policy\">web2</a>",
        "<dt>Operation</dt><dd>Update JIT Network Access Policy</dd>",
        "<dt>Resource</dt><dd>resource group prod (resource group prod)</dd>",
        "<dt>Outcome</dt><dd>Succeeded</dd>",
        "creates the policy, with 1 port(s)",
        "stage 1: 1 of group:jit-admins, token:ops; approved by policy up to PT15M; waits at most PT30M",
        "<th scope=\"row\">port 22/TCP: longest access</th><td>-</td><td>PT2H</td>",
        "<th scope=\"row\">port 22/TCP: at the end of access</th><td>-</td><td>cut</td>",
    ] {
        assert!(r.body.contains(want), "{want:?} in {}", r.body);
    }
    assert!(r.body.contains("<dt>Caller</dt><dd>"), "{}", r.body);
    assert!(r.body.contains("sub-alice"), "the caller: {}", r.body);
    assert_eq!(
        state(&p).await,
        (n0, none.clone()),
        "a preview writes nothing"
    );
    let body = hidden(&r.body, "body");
    let version = hidden(&r.body, "version");
    assert_eq!(version, "none");

    // Save: the API returns the policy previewed; one activity entry, by alice.
    let saved = p
        .post(
            &alice,
            "/groups/prod/policy",
            &p.public,
            &[("csrf", &csrf), ("body", &body), ("version", &version)],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(saved.location(), "/groups/prod/policy?saved=1");
    let (st, got) = p.h.get(GROUP_API, &p.h.admin).await;
    assert_eq!(st, StatusCode::OK, "{got}");
    let previewed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["ports"], previewed["ports"]);
    assert_eq!(
        got["ports"],
        json!([{"number": 22, "protocol": "TCP",
            "allowedSourceAddressPrefixes": ["198.51.100.0/24", "203.0.113.0/24"],
            "maxRequestAccessDuration": "PT2H", "onExpiry": "cut",
            "approval": {"autoApproveUpTo": "PT15M",
                "stages": [{"approvers": ["group:jit-admins", "token:ops"], "required": 1}],
                "allowSelfApproval": false, "allowEmergency": false, "timeout": "PT30M"}}])
    );
    let (n1, stored) = state(&p).await;
    assert_eq!(n1, n0 + 1);
    let log: Value = serde_json::from_str(
        &p.api_text(
            "/api/v1/activityLog?resourceGroup=prod&operation=Update+JIT+Network+Access+Policy",
        )
        .await,
    )
    .unwrap();
    let last = log["value"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["caller"].as_str().unwrap().contains("sub-alice"),
        "{last}"
    );
    assert_eq!(last["details"]["created"], true, "{last}");
    let page = p.get(&alice, "/groups/prod/policy?saved=1").await;
    assert!(
        page.body.contains("Saved: the policy is in force"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<table id=\"current\">"));
    assert!(
        page.body
            .contains(">198.51.100.0/24\n203.0.113.0/24</textarea>"),
        "the form holds the policy: {}",
        page.body
    );

    // web1 has no policy of its own: its editor says the group's applies and starts from it.
    let r = p.get(&alice, "/vms/web1/policy").await;
    assert!(
        r.body
            .contains("The policy of its resource group prod applies to it"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("id=\"p0-number\" name=\"p0-number\" type=\"text\" value=\"22\""),
        "{}",
        r.body
    );

    // Each invalid input: refused next to its field (and summarised), focused, nothing
    // written.
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        (
            "p0-number",
            "ssh",
            "p0-number",
            "port &#34;ssh&#34; is invalid: use a whole number from 1 to 65535",
        ),
        ("p0-number", "0", "p0-number", "port 0 is invalid"),
        ("p0-number", "65536", "p0-number", "port 65536 is invalid"),
        (
            "p0-sources",
            "10.0.0.0/33",
            "p0-sources",
            "source address prefix &#34;10.0.0.0/33&#34; is invalid",
        ),
        (
            "p0-sources",
            "",
            "p0-sources",
            "needs allowedSourceAddressPrefix",
        ),
        (
            "p0-max",
            "PT25H",
            "p0-max",
            "maxRequestAccessDuration PT25H is outside PT5M..PT24H",
        ),
        ("p0-max", "PT0S", "p0-max", "PT0S"),
        (
            "p0-s0-required",
            "3",
            "p0-s0-required",
            "required 3 is more than the 2 approver(s) named",
        ),
        (
            "p0-s0-required",
            "many",
            "p0-s0-required",
            "is not a whole number",
        ),
        (
            "p0-s0-approvers",
            "alice",
            "p0-s0-approvers",
            "is not a principal",
        ),
        (
            "p0-s0-approvers",
            "link:bob",
            "p0-s0-approvers",
            "can never approve",
        ),
        (
            "p0-s0-approvers",
            "",
            "p0-s0-approvers",
            "approvers must list 1 to 50 entries",
        ),
        ("p0-timeout", "P8D", "p0-timeout", "outside PT1M..P7D"),
        ("p0-auto", "soon", "p0-auto", "soon"),
        ("p0-protocol", "ICMP", "p0-protocol", "use TCP, UDP or *"),
        ("p0-sources", HOSTILE, "p0-sources", "is invalid"),
        (
            "p0-connections",
            "0",
            "p0-connections",
            "port 1: maxConnections must be a whole number from 1 to 65535",
        ),
        (
            "p0-connections",
            "65536",
            "p0-connections",
            "maxConnections must be a whole number from 1 to 65535",
        ),
        (
            "p0-connections",
            "one",
            "p0-connections",
            "maxConnections must be a whole number from 1 to 65535",
        ),
    ];
    for (field, value, at, want) in cases {
        // More approvals than people named counts only without a group (groups grow); a
        // person named twice counts once.
        let base = if at == "p0-s0-required" {
            with(
                valid(),
                "p0-s0-approvers",
                "token:ops\r\ntoken:lead token:ops",
            )
        } else {
            valid()
        };
        let r = post(
            &p,
            &alice,
            "/groups/prod/policy/preview",
            &csrf,
            &with(base, field, value),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{field}={value:?}: {}",
            r.body
        );
        let e = error_of(&r.body, at);
        assert!(e.contains(want), "{field}={value:?}: {want:?} not in {e:?}");
        assert!(
            r.body.contains("role=\"alert\" id=\"problems\""),
            "{}",
            r.body
        );
        assert!(
            r.body.contains(&format!("<li><a href=\"#{at}\">")),
            "{field}: {}",
            r.body
        );
        assert!(r.body.contains("aria-invalid=\"true\""));
        if at != "p0-protocol" {
            let tag = r.body.find(&format!("id=\"{at}\"")).unwrap();
            let end = tag + r.body[tag..].find('>').unwrap();
            assert!(
                r.body[tag..end].contains("autofocus"),
                "{field}: {}",
                &r.body[tag..end]
            );
        }
        assert!(!r.body.contains("id=\"preview\""));
        no_markup(&r);
        assert_eq!(
            state(&p).await,
            (n1, stored.clone()),
            "{field}={value:?} changed something"
        );
    }
    // A connection limit: previewed in words (the field's change and the activity entry),
    // nothing written by the preview.
    let r = post(
        &p,
        &alice,
        "/groups/prod/policy/preview",
        &csrf,
        &with(valid(), "p0-connections", "1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("most new connections per grant"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("new connections: at most 1 per grant"),
        "{}",
        r.body
    );
    assert_eq!(state(&p).await, (n1, stored.clone()));
    // Several problems at once: each at its field.
    let mut two = with(valid(), "p0-number", "70000");
    two = with(two, "p0-max", "PT30H");
    let r = post(&p, &alice, "/groups/prod/policy/preview", &csrf, &two).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(error_of(&r.body, "p0-number").contains("port 70000 is invalid"));
    assert!(error_of(&r.body, "p0-max").contains("PT30H"));
    assert!(r.body.contains("2 problem(s)"), "{}", r.body);
    // The API refuses the same body with the first of those problems, in the same words.
    let (st, v) =
        p.h.call(
            reqwest::Method::PUT,
            GROUP_API,
            Some(&p.h.admin),
            Some(json!({"ports": [{"number": 22, "protocol": "TCP",
                "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT1H",
                "approval": {"stages": [{"approvers": ["token:ops"], "required": 3}]}}]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("required 3 is more than the 1 approver(s)"),
        "{v}"
    );
    assert_eq!(state(&p).await, (n1, stored.clone()));

    // A stale preview: the API changes the policy between preview and save; nothing is
    // saved, the new preview is shown against the policy as it is now.
    let r = post(
        &p,
        &alice,
        "/groups/prod/policy/preview",
        &csrf,
        &with(valid(), "p0-max", "PT1H"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body
            .contains("port 22/TCP: longest access 3600 s (was 7200 s)"),
        "{}",
        r.body
    );
    let (old_body, old_version) = (hidden(&r.body, "body"), hidden(&r.body, "version"));
    assert_ne!(old_version, "none");
    p.h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let (n2, by_api) = state(&p).await;
    let r = p
        .post(
            &alice,
            "/groups/prod/policy",
            &p.public,
            &[
                ("csrf", &csrf),
                ("body", &old_body),
                ("version", &old_version),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.body
            .contains("Not saved: the policy was changed since your preview (by admin, "),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("port 22/TCP: longest access 3600 s (was 10800 s)"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("port 22/TCP: approval now required"),
        "{}",
        r.body
    );
    let new_version = hidden(&r.body, "version");
    assert_ne!(new_version, old_version);
    assert_eq!(
        state(&p).await,
        (n2, by_api.clone()),
        "a stale save writes nothing"
    );
    let r = p
        .post(
            &alice,
            "/groups/prod/policy",
            &p.public,
            &[
                ("csrf", &csrf),
                ("body", &hidden(&r.body, "body")),
                ("version", &new_version),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let (n3, now) = state(&p).await;
    assert_eq!(n3, n2 + 1);
    assert_eq!(now["ports"][0]["maxRequestAccessDuration"], "PT1H");

    // A reader sees the policy read-only, and may not preview or save.
    let r = p.get(&bob, "/groups/prod/policy").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("id=\"read-only\""), "{}", r.body);
    assert!(r.body.contains("<table id=\"current\">"));
    assert!(!r.body.contains("/policy/preview"), "{}", r.body);
    let bob_csrf = r.csrf();
    let r = post(&p, &bob, "/groups/prod/policy/preview", &bob_csrf, &valid()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = p
        .post(
            &bob,
            "/groups/prod/policy",
            &p.public,
            &[
                ("csrf", &bob_csrf),
                ("body", &old_body),
                ("version", &n3.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(
        p.get(&bob, "/groups/dev/policy")
            .await
            .body
            .contains("id=\"read-only\"")
    );
    assert_eq!(state(&p).await, (n3, now.clone()));

    // Without the CSRF token, with another session's, or from another origin: refused.
    let save = [
        ("body", old_body.as_str()),
        ("version", new_version.as_str()),
    ];
    let r = p
        .post(&alice, "/groups/prod/policy", &p.public, &save)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("CSRF"), "{}", r.body);
    let mut theirs = vec![("csrf", bob_csrf.as_str())];
    theirs.extend(save);
    let r = p
        .post(&alice, "/groups/prod/policy", &p.public, &theirs)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let mut ours = vec![("csrf", csrf.as_str())];
    ours.extend(save);
    let r = p
        .post(&alice, "/groups/prod/policy", "https://evil.example", &ours)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("Origin"), "{}", r.body);
    assert_eq!(state(&p).await, (n3, now.clone()));

    // A VM's own policy with a hostile approver (set through the API): text everywhere,
    // in the read-only view, the form and the preview.
    p.h.put_vm_policy(
        "web1",
        json!([{"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": "PT1H",
            "approval": {"stages": [{"approvers": [HOSTILE_APPROVER], "required": 1}]}}]),
    )
    .await;
    let r = p.get(&bob, "/vms/web1/policy").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("&#60;script&#62;alert(9)&#60;/script&#62;"),
        "{}",
        r.body
    );
    no_markup(&r);
    let r = p.get(&alice, "/vms/web1/policy").await;
    no_markup(&r);
    let f = with(
        with(
            with(valid(), "p0-number", "3389"),
            "p0-s0-approvers",
            HOSTILE_APPROVER,
        ),
        "p0-sources",
        "203.0.113.0/24",
    );
    let r = post(&p, &alice, "/vms/web1/policy/preview", &csrf, &f).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(
            "VM web1: its own policy replaces the policy of its resource group prod for it."
        ),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("<dt>Resource</dt><dd>VM web1 (resource group prod)</dd>")
    );
    no_markup(&r);
    let b: Value = serde_json::from_str(&hidden(&r.body, "body")).unwrap();
    assert_eq!(
        b["ports"][0]["approval"]["stages"][0]["approvers"],
        json!([HOSTILE_APPROVER])
    );
    // The previews were rolled back whole: the hash chain still verifies.
    let (_, v) = p.h.get("/api/v1/activityLog/verify", &p.h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
    // A VM outside everything: not found; a group that does not exist: not found.
    assert_eq!(
        p.get(&alice, "/vms/nope/policy").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        p.get(&alice, "/groups/nope/policy").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_deletion() {
    let p = Portal::start().await;
    p.h.fixture().await;
    let ssh = |max: &str| {
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": max}])
    };
    p.h.put_rg_policy("prod", ssh("PT1H")).await;
    p.h.put_vm_policy("web1", ssh("PT2H")).await;
    p.h.put_vm_policy("web2", ssh("PT3H")).await;
    let alice = p.sign_in("alice").await; // admin on *
    let bob = p.sign_in("bob").await; // requester on rg:prod
    const VM_API: &str = "/api/v1/virtualMachines/web1/jitNetworkAccessPolicies/default";
    let vm_state = async || {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM activity")
            .fetch_one(p.h.app().db.pool())
            .await
            .unwrap();
        (n, p.h.get(VM_API, &p.h.admin).await)
    };

    // Only those who may write the policy get the button; others may not post.
    let page = p.get(&alice, "/vms/web1/policy").await;
    assert!(page.body.contains("id=\"delete\""), "{}", page.body);
    let csrf = page.csrf();
    let r = p.get(&bob, "/vms/web1/policy").await;
    assert!(!r.body.contains("/policy/delete"), "{}", r.body);
    let bob_csrf = r.csrf();
    let before = vm_state().await;
    let r = p
        .post(
            &bob,
            "/vms/web1/policy/delete",
            &p.public,
            &[("csrf", &bob_csrf), ("confirm", "yes"), ("version", "x")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // Without the CSRF token: refused.
    let r = p
        .post(
            &alice,
            "/vms/web1/policy/delete",
            &p.public,
            &[("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // The review: what deleting changes, written nowhere.
    let r = p
        .post(
            &alice,
            "/vms/web1/policy/delete",
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("id=\"delete-review\""), "{}", r.body);
    assert!(
        r.body.contains("port 22/TCP removed: no longer protected"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("Afterwards the policy of its resource group prod applies to VM web1."),
        "{}",
        r.body
    );
    let old_version = hidden(&r.body, "version");
    assert_eq!(vm_state().await, before, "the review wrote nothing");

    // Changed through the API meanwhile: the confirmation deletes nothing.
    p.h.put_vm_policy("web1", ssh("PT4H")).await;
    let changed = vm_state().await;
    let r = p
        .post(
            &alice,
            "/vms/web1/policy/delete",
            &p.public,
            &[
                ("csrf", &csrf),
                ("confirm", "yes"),
                ("version", &old_version),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.body
            .contains("Not deleted: the policy was changed since you reviewed it (by admin, "),
        "{}",
        r.body
    );
    assert_eq!(
        vm_state().await,
        changed,
        "a stale confirmation deletes nothing"
    );
    let new_version = hidden(&r.body, "version");
    assert_ne!(new_version, old_version);

    // The version shown deletes: logged, and the group's policy applies again.
    let r = p
        .post(
            &alice,
            "/vms/web1/policy/delete",
            &p.public,
            &[
                ("csrf", &csrf),
                ("confirm", "yes"),
                ("version", &new_version),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let (n, (st, _)) = vm_state().await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(n, changed.0 + 1);
    let (_, log) = p.h.get("/api/v1/activityLog?vm=web1", &p.h.admin).await;
    let last = log["value"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["operation"], "Delete JIT Network Access Policy",
        "{log}"
    );
    assert!(
        last["caller"].as_str().unwrap().starts_with("alice "),
        "{last}"
    );
    let (_, vm) = p.h.get("/api/v1/virtualMachines/web1", &p.h.admin).await;
    assert_eq!(vm["effectivePolicy"]["scope"], "resourceGroup", "{vm}");
    let r = p.get(&alice, "/vms/web1/policy?deleted=1").await;
    assert!(r.body.contains("Deleted: "), "{}", r.body);
    assert!(!r.body.contains("id=\"delete\""), "nothing left to delete");

    // A group's: the VMs that lose it, and those keeping their own.
    let r = p
        .post(
            &alice,
            "/groups/prod/policy/delete",
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(
            "This weakens protection:</strong> 1 VM(s) of resource group prod lose this policy"
        ),
        "{}",
        r.body
    );
    assert!(r.body.contains("href=\"/vms/web1\">web1</a>"), "{}", r.body);
    assert!(
        r.body
            .contains("1 VM(s) with a policy of their own keep it."),
        "{}",
        r.body
    );
    // The rolled-back reviews left the hash chain whole.
    let (_, v) = p.h.get("/api/v1/activityLog/verify", &p.h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
}
