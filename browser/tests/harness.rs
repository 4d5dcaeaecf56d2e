//! The harness's own checks, against pages of a local HTTPS site: every check passes on a
//! clean page and fails on a page that breaks it, only the named certificate is trusted, and
//! the browser's processes go away when the handle drops or the test process is killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitgate_browser::{
    Browser, BrowserOptions, HeaderPolicy, StaticSite, security_header_problems,
};

/// A self-signed certificate for 127.0.0.1: (directory, PEM file, PEM, key PEM).
fn cert() -> (tempfile::TempDir, std::path::PathBuf, String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.pem");
    std::fs::write(&file, c.cert.pem()).unwrap();
    (dir, file, c.cert.pem(), c.key_pair.serialize_pem())
}

const STRICT: &str = r#"<meta http-equiv="Content-Security-Policy" content="default-src 'none'; form-action 'self'">"#;

fn page(title: &str, head: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{head}<title>{title}</title></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>"
    )
}

/// No browser process of the group is left within a generous bound.
fn group_gone(pgid: i32) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        // SAFETY: kill(2) with signal 0 only checks for existence.
        if unsafe { libc::kill(-pgid, 0) } != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test]
async fn each_check_passes_on_a_clean_page_and_fails_on_a_broken_one() {
    let (_d, cert_file, cert_pem, key_pem) = cert();
    let good = page(
        "Good",
        STRICT,
        "<form method=\"get\" action=\"/good\"><label for=\"q\">Search</label>\
         <input id=\"q\" name=\"q\"><button type=\"submit\">Go</button></form>",
    );
    let inline = page("Inline", STRICT, "<script>document.title = 'ran';</script>");
    let error = page(
        "Error",
        "",
        "<script>console.error('broken on purpose')</script>",
    );
    let inaccessible = "<!doctype html><html><head><title>x</title></head><body>\
        <input name=\"unlabelled\"><img src=\"/good\"></body></html>";
    let site = StaticSite::start(
        &cert_pem,
        &key_pem,
        &[
            ("/good", &good),
            ("/inline", &inline),
            ("/error", &error),
            ("/inaccessible", inaccessible),
        ],
    )
    .await
    .unwrap();
    let b = Browser::start(BrowserOptions::new("harness_checks").trust(&cert_file))
        .await
        .unwrap();

    // A clean page: every check passes, a screenshot is saved; typing and clicking work.
    b.goto(&site.url("/good")).await.unwrap();
    b.wait_for_text("Good").await.unwrap();
    b.checkpoint("good").await;
    let shots: Vec<_> = std::fs::read_dir(b.screenshot_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(shots.len(), 1, "{shots:?}");
    assert!(shots[0].ends_with("01-good.png"));
    assert!(std::fs::read(&shots[0]).unwrap().starts_with(b"\x89PNG"));
    b.fill_label("Search", "it's \"quoted\"").await.unwrap();
    b.click_button("Go").await.unwrap();
    let url = b.wait_for_url(&site.url("/good?q=")).await.unwrap();
    assert!(url.contains("q=it%27s+%22quoted%22"), "{url}");
    b.assert_clean().await;

    // The responses' headers, from the browser's own log: this site sends no CSP header.
    let docs: Vec<_> = b
        .responses()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "Document")
        .collect();
    // The first page's response was checked (and drained) by the checkpoint.
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0].status, 200);
    assert_eq!(docs[0].headers["cache-control"], "no-store");
    let p = security_header_problems(&docs[0].headers, &HeaderPolicy::default());
    assert!(p.iter().any(|m| m == "no Content-Security-Policy"), "{p:?}");

    // An inline script under a strict CSP: the console and the listener both report it.
    b.goto(&site.url("/inline")).await.unwrap();
    assert_eq!(
        b.title().await.unwrap(),
        "Inline",
        "the script must not run"
    );
    let p = b.problems().await.unwrap();
    assert!(
        p.iter()
            .any(|m| m.starts_with("console SEVERE (security)") && m.contains("inline script")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("Content-Security-Policy violation: script-src-elem")),
        "{p:?}"
    );

    // console.error fails a page; an announced error passes, an announced one that never
    // came fails.
    b.goto(&site.url("/error")).await.unwrap();
    let p = b.problems().await.unwrap();
    assert!(p.iter().any(|m| m.contains("broken on purpose")), "{p:?}");
    b.expect_console_error("status of 404");
    b.goto(&site.url("/missing")).await.unwrap();
    assert_eq!(b.problems().await.unwrap(), Vec::<String>::new());
    b.expect_console_error("status of 500");
    let p = b.problems().await.unwrap();
    assert!(p[0].contains("\"status of 500\" did not appear"), "{p:?}");

    // axe-core names what is wrong.
    b.goto(&site.url("/inaccessible")).await.unwrap();
    let v = b.axe().await.unwrap();
    let serious: Vec<&str> = v
        .iter()
        .filter(|v| v.is_serious())
        .map(|v| v.id.as_str())
        .collect();
    for id in ["html-has-lang", "label", "image-alt"] {
        assert!(serious.contains(&id), "{id}: {v:#?}");
    }
    b.assert_clean().await;
    b.close().await.unwrap();
}

#[tokio::test]
async fn only_the_named_certificate_is_trusted() {
    let (_d1, trusted, _, _) = cert();
    let (_d2, _, other_pem, other_key) = cert();
    let body = page("Secret", "", "<p>should not show</p>");
    let site = StaticSite::start(&other_pem, &other_key, &[("/", &body)])
        .await
        .unwrap();
    let b = Browser::start(BrowserOptions::new("harness_untrusted").trust(&trusted))
        .await
        .unwrap();
    // Chromium shows its certificate error page (or chromedriver reports the error).
    let _ = b.goto(&site.url("/")).await;
    let text = b.text().await.unwrap_or_default();
    assert!(!text.contains("should not show"), "{text}");
    let p = b.problems().await.unwrap();
    assert!(
        p.iter()
            .any(|m| m.contains("net::ERR_CERT_AUTHORITY_INVALID")),
        "a refused certificate is a problem: {p:?}"
    );
}

#[tokio::test]
async fn the_processes_go_when_the_browser_drops() {
    let b = Browser::start(BrowserOptions::new("harness_drop"))
        .await
        .unwrap();
    let pgid = b.process_group();
    // SAFETY: signal 0 only checks for existence.
    assert_eq!(unsafe { libc::kill(-pgid, 0) }, 0, "the group runs");
    let members = b.processes();
    assert!(
        members.iter().any(|(_, c)| c == "chromium"),
        "chromedriver started Chromium in its group: {members:?}"
    );
    drop(b);
    assert!(group_gone(pgid), "browser processes left behind");
}

/// Started by the next test in a process of its own, which that test then kills.
#[tokio::test]
async fn child_holding_a_browser() {
    if std::env::var_os("JIT_BROWSER_CHILD").is_none() {
        return;
    }
    let b = Browser::start(BrowserOptions::new("harness_child"))
        .await
        .unwrap();
    println!("PGID {}", b.process_group());
    tokio::time::sleep(Duration::from_secs(300)).await;
}

#[test]
fn the_processes_go_when_the_test_process_is_killed() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holding_a_browser", "--nocapture"])
        .env("JIT_BROWSER_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let pgid: i32 = out
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("PGID ").map(|p| p.trim().parse().unwrap()))
        .expect("the child started a browser");
    // SAFETY: signal 0 only checks for existence.
    assert_eq!(unsafe { libc::kill(-pgid, 0) }, 0);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(group_gone(pgid), "the watchdog did not end the browser");
}
