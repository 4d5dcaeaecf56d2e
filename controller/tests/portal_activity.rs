//! The portal's activity log page over real HTTPS, people signed in through the real OpenID
//! provider: filters, keyset pages, exports equal to the API's for the same filter, hostile
//! strings inert, the verification panel for readers of everything only, and a row changed
//! in the database named by the verification.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/portal_client.rs"]
mod portal_client;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use common::lab::HOSTILE;
use common::one_port;
use jitgate_api::Role;
use portal_client::Portal;
use reqwest::StatusCode;
use serde_json::json;

const INITIATE: &str = "Initiate JIT Network Access";

/// How many entries a page lists.
fn rows(body: &str) -> usize {
    body.matches("<tr id=\"entry-").count()
}

/// The API's answer to `GET /api/v1/activityLog?{query}` as the admin token sees it.
async fn api(p: &Portal, query: &str) -> String {
    p.api_text(&format!("/api/v1/activityLog?{query}")).await
}

#[tokio::test]
async fn activity_log_filters_pages_exports_and_verifies() {
    let p = Portal::start().await;
    let h = &p.h;
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let requester = h.token("ops", Role::Requester, "rg:prod").await;
    for vm in ["web1", "web2", "web1"] {
        let mut body = one_port(
            vm,
            json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
        );
        body["justification"] = json!(HOSTILE);
        let (st, v) = h.initiate(&requester, body).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    // Enough entries for a second page (tokens are outside every resource group).
    for i in 0..50 {
        h.token(&format!("t{i}"), Role::Reader, "*").await;
    }
    h.app().audit.checkpoint().await.expect("checkpoint");

    let alice = p.sign_in("alice").await; // admin on *
    let page = p.get(&alice, "/activity").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(rows(&page.body), 50, "one page");
    assert!(page.body.contains("Verify the whole log"), "{}", page.body);
    assert!(
        page.body.contains("The last signed checkpoint"),
        "{}",
        page.body
    );
    // The signed checkpoints are listed, each with the entries it adds.
    let (head,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM activity_checkpoints")
        .fetch_one(h.app().db.pool())
        .await
        .unwrap();
    assert!(
        page.body.contains("Signed checkpoints, newest first")
            && page.body.contains(&format!("<td>entries 1 to {head}</td>")),
        "{}",
        page.body
    );
    // Newest first, and the next page continues below the last seq shown.
    let next = page
        .body
        .split("<a href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|h| h.starts_with("/activity?before="))
        .expect("an Older entries link")
        .replace("&amp;", "&");
    let older = p.get(&alice, &next).await;
    assert_eq!(older.status, StatusCode::OK);
    let first_seq = |b: &str| -> i64 {
        b.split("<tr id=\"entry-")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let last_seq = |b: &str| -> i64 {
        b.rsplit("<tr id=\"entry-")
            .next()
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(first_seq(&page.body) > last_seq(&page.body));
    assert!(last_seq(&page.body) > first_seq(&older.body));
    assert!(rows(&older.body) > 0);

    // Filtered to one VM and one operation: only those, hostile text shown as text.
    let filter = format!(
        "vm=web1&operation={}",
        url::form_urlencoded::byte_serialize(INITIATE.as_bytes()).collect::<String>()
    );
    let page = p.get(&alice, &format!("/activity?{filter}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(rows(&page.body), 2, "{}", page.body);
    assert!(!page.body.contains("<td>web2</td>"));
    assert!(!page.body.contains("<script>alert") && !page.body.contains("<img src=x"));
    assert!(page.body.contains("&#60;img src=x onerror=alert(2)&#62;"));
    // Each entry's details as labelled fields (the hostile justification as text), and as
    // recorded.
    assert!(
        page.body
            .contains("<dt>Justification</dt><dd class=\"text\">")
            && page.body.contains("<summary>As recorded</summary>"),
        "{}",
        page.body
    );

    // The exports are the API's answers to the same filter.
    for format in ["csv", "json"] {
        let r = p
            .browser
            .get(format!(
                "{}/activity/export?{filter}&format={format}",
                p.public
            ))
            .header("cookie", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        portal_client::check_headers(r.headers());
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains(&format!("jitgate-activity.{format}"))
        );
        let got = r.text().await.unwrap();
        assert_eq!(got, api(&p, &format!("{filter}&format={format}")).await);
        if format == "csv" {
            assert_eq!(got.lines().count(), 3, "a header and two entries: {got}");
        }
    }

    // Bad filters are refused in words, and nothing is listed.
    let bad = p.get(&alice, "/activity?from=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("is not a time"), "{}", bad.body);
    let bad = p.get(&alice, "/activity?operation=Delete+everything").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = p.get(&alice, "/activity/export?format=xml").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // bob (requester on rg:prod, reader on rg:dev) sees his groups' entries only, and no
    // verification: it reads the whole log.
    let bob = p.sign_in("bob").await;
    let page = p.get(&bob, "/activity").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("Verify the whole log"));
    assert!(rows(&page.body) >= 4, "the policy and three requests");
    assert!(
        !page.body.contains("<td>Create API Token</td>"),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    let r = p
        .post(&bob, "/activity/verify", &p.public, &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Verification. The mark: the background task's step, run here by hand.
    let audit = &h.app().audit;
    let mark = audit
        .extend_verified(jitgate_controller::audit::VERIFY_STEP)
        .await
        .unwrap();
    assert_eq!(mark.failed_seq, None);
    let page = p.get(&alice, "/activity").await;
    assert!(
        page.body
            .contains(&format!("Verified up to entry {}", mark.seq)),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    let r = p
        .post(&alice, "/activity/verify", &p.public, &[("csrf", "0")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "CSRF");
    let verify_all = || async {
        let r = p
            .post(&alice, "/activity/verify", &p.public, &[("csrf", &csrf)])
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        // The page follows the run (htmx polls the fragment; here, the fragment itself).
        let done = p
            .until(
                &alice,
                "/activity/verify/progress",
                "role=\"status\" class=",
            )
            .await;
        assert!(!done.contains("<html"), "a fragment");
        done
    };
    let done = verify_all().await;
    assert!(done.contains("Verified: entries 1 to"), "{done}");

    // An old entry (below the mark) changed: the next step walks only new entries and
    // cannot see it; verifying the whole log names it, and the mark says so from then on.
    let pool = h.app().db.pool();
    let (seq,): (i64,) =
        sqlx::query_as("SELECT MIN(seq) FROM activity WHERE vm = 'web2' AND operation = $1")
            .bind(INITIATE)
            .fetch_one(pool)
            .await
            .unwrap();
    let (caller,): (String,) = sqlx::query_as("SELECT caller FROM activity WHERE seq = $1")
        .bind(seq)
        .fetch_one(pool)
        .await
        .unwrap();
    let set_caller = |c: String| async move {
        sqlx::query("UPDATE activity SET caller = $1 WHERE seq = $2")
            .bind(c)
            .bind(seq)
            .execute(h.app().db.pool())
            .await
            .unwrap();
    };
    set_caller("someone-else".into()).await;
    let still = audit
        .extend_verified(jitgate_controller::audit::VERIFY_STEP)
        .await
        .unwrap();
    assert_eq!(
        still.failed_seq, None,
        "the step does not re-read old entries"
    );
    let done = verify_all().await;
    assert!(
        done.contains(&format!("Verification failed at entry {seq}")),
        "{done}"
    );
    let page = p.get(&alice, "/activity").await;
    assert!(
        page.body
            .contains(&format!("Verification FAILED at entry {seq}")),
        "{}",
        page.body
    );

    // Put back, verified whole again: the mark is clear. Then a new entry changed before
    // the step reaches it: the step names it.
    set_caller(caller).await;
    let done = verify_all().await;
    assert!(done.contains("Verified: entries 1 to"), "{done}");
    h.token("late", Role::Reader, "*").await;
    let (late,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM activity")
        .fetch_one(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE activity SET caller = 'someone-else' WHERE seq = $1")
        .bind(late)
        .execute(pool)
        .await
        .unwrap();
    let mark = audit
        .extend_verified(jitgate_controller::audit::VERIFY_STEP)
        .await
        .unwrap();
    assert_eq!(mark.failed_seq, Some(late), "{mark:?}");
    let page = p.get(&alice, "/activity").await;
    assert!(
        page.body
            .contains(&format!("Verification FAILED at entry {late}")),
        "{}",
        page.body
    );
}
