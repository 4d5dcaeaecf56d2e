//! Webhook delivery against a real local HTTPS receiver: signatures, failure kinds within
//! the timeout, Retry-After, redirects, plain http, and the address policy (the checked
//! address is the one connected to). Everything on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{
    Answer, Pki, Receiver, ScriptedResolver, closed_port, config, loopback_deliverer,
    silent_listener,
};
use jitgate_notify::resolve::SystemResolver;
use jitgate_notify::{
    Deliverer, Event, EventType, FailureKind, Outcome, SecretStore, Sink, SinkRules, SinkSpec,
    SinkUrl, StatusClass, examples, verify_signature,
};
use time::OffsetDateTime;

const TIMEOUT: Duration = Duration::from_secs(2);

fn secrets() -> (tempfile::TempDir, SecretStore) {
    let t = tempfile::tempdir().unwrap();
    let s = SecretStore::open(t.path().join("secrets")).unwrap();
    s.put(&"hook-key".parse().unwrap(), b"whsec-test-key\n")
        .unwrap();
    (t, s)
}

fn webhook(url: &str, allow_http: bool) -> Sink {
    Sink::from_spec(
        &SinkSpec {
            name: "hook".into(),
            events: vec![],
            scope: None,
            format: "webhook".into(),
            target: url.into(),
            secret: Some("hook-key".into()),
            to_group: None,
        },
        &SinkRules { allow_http },
    )
    .unwrap()
}

fn event() -> Event {
    examples::sample(
        EventType::RequestPendingApproval,
        "INC-42: patching",
        OffsetDateTime::now_utc(),
        None,
    )
}

async fn send(d: &Deliverer, sink: &Sink, s: &SecretStore) -> Outcome {
    d.deliver(sink, &event(), s, &[], SystemTime::now()).await
}

fn kind(o: &Outcome) -> FailureKind {
    o.failure()
        .unwrap_or_else(|| panic!("expected a failure, got {o:?}"))
        .kind
}

#[tokio::test]
async fn every_event_type_arrives_signed_and_whole() {
    let pki = Pki::new("test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let d = loopback_deliverer(&pki, TIMEOUT);
    let (_t, s) = secrets();
    let sink = webhook(&rx.url("https", "receiver.test"), false);
    let events = examples::all("INC-42", OffsetDateTime::now_utc(), None);
    for e in &events {
        let o = d.deliver(&sink, e, &s, &[], SystemTime::now()).await;
        assert_eq!(
            o,
            Outcome::Delivered {
                status: StatusClass::Success
            },
            "{}",
            e.event_type()
        );
    }
    let got = rx.received();
    assert_eq!(got.len(), events.len());
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for (r, e) in got.iter().zip(&events) {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("jitgate-delivery"),
            Some(e.id.to_string().as_str())
        );
        assert_eq!(r.header("jitgate-event"), Some(e.event_type().as_str()));
        let sig = r.header("jitgate-signature").unwrap();
        // The stored secret's trailing newline is not part of the key.
        verify_signature(
            sig,
            &r.body,
            b"whsec-test-key",
            now,
            Duration::from_secs(300),
        )
        .unwrap();
        assert!(
            verify_signature(
                sig,
                &r.body,
                b"whsec-test-key\n",
                now,
                Duration::from_secs(300)
            )
            .is_err()
        );
        let back: Event = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(&back, e);
        assert_eq!(r.json()["type"], e.event_type().as_str());
    }
}

#[tokio::test]
async fn receiver_failures_give_their_kind_within_the_timeout() {
    let pki = Pki::new("test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let other = Receiver::https(&pki, "127.0.0.1").await;
    let d = loopback_deliverer(&pki, TIMEOUT);
    let (_t, s) = secrets();
    let sink = webhook(&rx.url("https", "receiver.test"), false);

    rx.answer(Answer::Status(500));
    let o = send(&d, &sink, &s).await;
    let f = o.failure().unwrap();
    assert_eq!(
        (f.kind, f.status),
        (FailureKind::Http5xx, Some(StatusClass::ServerError))
    );
    assert!(!f.detail.contains("receiver body"), "{f:?}");

    rx.answer(Answer::Status(404));
    assert_eq!(kind(&send(&d, &sink, &s).await), FailureKind::Http4xx);

    rx.answer(Answer::WithHeader(429, "retry-after", "7".into()));
    let o = send(&d, &sink, &s).await;
    let f = o.failure().unwrap();
    assert_eq!(
        (f.kind, f.retry_after),
        (FailureKind::RateLimited, Some(Duration::from_secs(7)))
    );
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    rx.answer(Answer::WithHeader(429, "retry-after", date));
    let f = send(&d, &sink, &s).await.failure().cloned().unwrap();
    let wait = f.retry_after.unwrap();
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
    rx.answer(Answer::WithHeader(503, "retry-after", "30".into()));
    let f = send(&d, &sink, &s).await.failure().cloned().unwrap();
    assert_eq!(
        (f.kind, f.retry_after),
        (FailureKind::Http5xx, Some(Duration::from_secs(30)))
    );

    // A redirect is an answer, not an instruction: the other receiver is never contacted.
    rx.answer(Answer::WithHeader(
        307,
        "location",
        other.url("https", "receiver.test"),
    ));
    let f = send(&d, &sink, &s).await.failure().cloned().unwrap();
    assert_eq!(
        (f.kind, f.status),
        (FailureKind::Redirect, Some(StatusClass::Redirect))
    );
    assert!(other.received().is_empty());
    let before = rx.received().len();

    // Refused, hanging after the request, silent before TLS, untrusted certificate,
    // unresolvable: all at once, each bounded by the timeout.
    let refused = webhook(
        &format!("https://receiver.test:{}/hook", closed_port().await),
        false,
    );
    let hanging = Receiver::https(&pki, "127.0.0.1").await;
    hanging.answer(Answer::Hang);
    let hang = webhook(&hanging.url("https", "receiver.test"), false);
    let (silent_addr, _silent) = silent_listener().await;
    let silent = webhook(
        &format!("https://receiver.test:{}/hook", silent_addr.port()),
        false,
    );
    let stranger = Receiver::https(&Pki::new("another CA"), "127.0.0.1").await;
    let untrusted = webhook(&stranger.url("https", "receiver.test"), false);
    let nxdomain = Deliverer::with_resolver(
        config(&pki, &["127.0.0.1/32"], false, TIMEOUT),
        ScriptedResolver::new(vec![Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no such host",
        ))]),
    )
    .unwrap();
    let timed = |o: Outcome, started: Instant| (o, started.elapsed());
    let t0 = Instant::now();
    let (r, h, si, u, n) = tokio::join!(
        async { timed(send(&d, &refused, &s).await, t0) },
        async { timed(send(&d, &hang, &s).await, t0) },
        async { timed(send(&d, &silent, &s).await, t0) },
        async { timed(send(&d, &untrusted, &s).await, t0) },
        async { timed(send(&nxdomain, &sink, &s).await, t0) },
    );
    assert_eq!(kind(&r.0), FailureKind::Refused, "{r:?}");
    assert_eq!(kind(&h.0), FailureKind::Timeout, "{h:?}");
    assert_eq!(kind(&si.0), FailureKind::Timeout, "{si:?}");
    assert_eq!(kind(&u.0), FailureKind::Tls, "{u:?}");
    assert_eq!(kind(&n.0), FailureKind::Dns, "{n:?}");
    // The hanging receiver got the request, and the attempt still ended on time.
    assert_eq!(hanging.received().len(), 1);
    for (o, took) in [&h, &si] {
        assert!(
            *took >= TIMEOUT - Duration::from_millis(100)
                && *took < TIMEOUT + Duration::from_millis(2500),
            "{o:?} took {took:?}"
        );
    }
    for (o, took) in [&r, &u, &n] {
        assert!(
            *took < TIMEOUT + Duration::from_millis(2500),
            "{o:?} took {took:?}"
        );
    }
    assert!(stranger.received().is_empty());
    assert_eq!(rx.received().len(), before);
}

#[tokio::test]
async fn internal_addresses_are_refused_unless_allowed() {
    let pki = Pki::new("test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let (_t, s) = secrets();
    let named = webhook(&rx.url("https", "receiver.test"), false);
    let url = SinkUrl::parse(&rx.url("https", "receiver.test"), false).unwrap();
    // Loopback answers are tried for real (a receiver listens there and must get nothing).
    for answer in [vec!["127.0.0.1"], vec!["::1"], vec!["::ffff:127.0.0.1"]] {
        let resolver = ScriptedResolver::always(&answer);
        let d =
            Deliverer::with_resolver(config(&pki, &[], false, TIMEOUT), resolver.clone()).unwrap();
        let o = send(&d, &named, &s).await;
        assert_eq!(kind(&o), FailureKind::BlockedAddress, "{answer:?}: {o:?}");
        let err = d.check_target(&url).await.unwrap_err().to_string();
        assert!(err.contains("not in notify.allow_networks"), "{err}");
        assert_eq!(resolver.calls(), 2);
    }
    // Answers outside loopback go through the same check at add time only, so that even a
    // broken check could not send a packet off this machine.
    for (answer, reason) in [
        (vec!["10.1.2.3"], "private"),
        (vec!["169.254.169.254"], "cloud metadata"),
        (vec!["fd00:ec2::254"], "cloud metadata"),
        (vec!["100.64.0.1"], "shared address space"),
        (vec!["fe80::1"], "link-local"),
    ] {
        let d = Deliverer::with_resolver(
            config(&pki, &[], false, TIMEOUT),
            ScriptedResolver::always(&answer),
        )
        .unwrap();
        let err = d.check_target(&url).await.unwrap_err().to_string();
        assert!(err.contains(reason), "{answer:?}: {err}");
    }
    // One allowed and one refused address for the same name: the whole name is refused.
    let mixed = ScriptedResolver::always(&["127.0.0.1", "127.0.0.2"]);
    let d =
        Deliverer::with_resolver(config(&pki, &["127.0.0.1/32"], false, TIMEOUT), mixed).unwrap();
    let o = send(&d, &named, &s).await;
    assert_eq!(kind(&o), FailureKind::BlockedAddress, "{o:?}");
    assert!(o.failure().unwrap().detail.contains("127.0.0.2"), "{o:?}");
    // Literal addresses and the system resolver's localhost.
    let system =
        Deliverer::with_resolver(config(&pki, &[], false, TIMEOUT), Arc::new(SystemResolver))
            .unwrap();
    for url in [
        rx.url("https", "127.0.0.1"),
        rx.url("https", "[::1]"),
        rx.url("https", "localhost"),
        format!("https://0x7f.1:{}/hook", rx.addr.port()),
    ] {
        let o = send(&system, &webhook(&url, false), &s).await;
        assert_eq!(kind(&o), FailureKind::BlockedAddress, "{url}: {o:?}");
        assert!(
            system
                .check_target(&SinkUrl::parse(&url, false).unwrap())
                .await
                .is_err(),
            "{url}"
        );
    }
    assert!(rx.received().is_empty());

    // Allowed by the configuration: delivered.
    let allowed = Deliverer::with_resolver(
        config(&pki, &["127.0.0.0/8", "::1/128"], false, TIMEOUT),
        Arc::new(SystemResolver),
    )
    .unwrap();
    for url in [rx.url("https", "127.0.0.1"), rx.url("https", "localhost")] {
        let u = SinkUrl::parse(&url, false).unwrap();
        assert!(!allowed.check_target(&u).await.unwrap().is_empty());
        let o = send(&allowed, &webhook(&url, false), &s).await;
        assert!(o.is_delivered(), "{url}: {o:?}");
    }
    assert_eq!(rx.received().len(), 2);
}

#[tokio::test]
async fn the_checked_address_is_the_one_connected_to() {
    let pki = Pki::new("test CA");
    let a = Receiver::https(&pki, "127.0.0.1").await;
    let b = Receiver::https_on(&pki, "127.0.0.2", a.addr.port()).await;
    let (_t, s) = secrets();
    let sink = webhook(&a.url("https", "receiver.test"), false);
    let allow = ["127.0.0.1/32"];

    // First answer allowed, a second one would not be: the connection goes to the first.
    let r = ScriptedResolver::new(vec![
        Ok(vec!["127.0.0.1".parse().unwrap()]),
        Ok(vec!["127.0.0.2".parse().unwrap()]),
    ]);
    let d = Deliverer::with_resolver(config(&pki, &allow, false, TIMEOUT), r.clone()).unwrap();
    assert!(send(&d, &sink, &s).await.is_delivered());
    assert_eq!(r.calls(), 1);
    assert_eq!(a.received().len(), 1);
    assert_eq!(a.received()[0].local.ip().to_string(), "127.0.0.1");
    assert!(b.received().is_empty());

    // Checked at add, rebound before the send: the send resolves, checks again, refuses.
    let r = ScriptedResolver::new(vec![
        Ok(vec!["127.0.0.1".parse().unwrap()]),
        Ok(vec!["127.0.0.2".parse().unwrap()]),
    ]);
    let d = Deliverer::with_resolver(config(&pki, &allow, false, TIMEOUT), r.clone()).unwrap();
    let url = SinkUrl::parse(&a.url("https", "receiver.test"), false).unwrap();
    d.check_target(&url).await.unwrap();
    assert_eq!(
        kind(&send(&d, &sink, &s).await),
        FailureKind::BlockedAddress
    );
    assert_eq!(r.calls(), 2);
    assert!(b.received().is_empty());
    assert_eq!(a.received().len(), 1);
}

#[tokio::test]
async fn plain_http_only_where_the_configuration_allows_it() {
    let pki = Pki::new("test CA");
    let rx = Receiver::http("127.0.0.1").await;
    let (_t, s) = secrets();
    let url = rx.url("http", "receiver.test");
    let spec = SinkSpec {
        name: "plain".into(),
        events: vec![],
        scope: None,
        format: "webhook".into(),
        target: url.clone(),
        secret: Some("hook-key".into()),
        to_group: None,
    };
    let err = Sink::from_spec(&spec, &SinkRules { allow_http: false }).unwrap_err();
    assert!(err.to_string().contains("plain http"), "{err}");
    let sink = webhook(&url, true);
    let resolver = ScriptedResolver::always(&["127.0.0.1"]);
    // Stored while http was allowed, sent after the configuration stopped allowing it.
    let strict = Deliverer::with_resolver(
        config(&pki, &["127.0.0.1/32"], false, TIMEOUT),
        resolver.clone(),
    )
    .unwrap();
    assert_eq!(
        kind(&send(&strict, &sink, &s).await),
        FailureKind::Misconfigured
    );
    let u = SinkUrl::parse(&url, true).unwrap();
    assert!(
        strict
            .check_target(&u)
            .await
            .unwrap_err()
            .to_string()
            .contains("plain http")
    );
    assert!(rx.received().is_empty());
    let lax =
        Deliverer::with_resolver(config(&pki, &["127.0.0.1/32"], true, TIMEOUT), resolver).unwrap();
    assert!(send(&lax, &sink, &s).await.is_delivered());
    assert_eq!(rx.received().len(), 1);
}

#[tokio::test]
async fn missing_secret_is_a_configuration_failure_and_sends_nothing() {
    let pki = Pki::new("test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let t = tempfile::tempdir().unwrap();
    let empty = SecretStore::open(t.path().join("s")).unwrap();
    let sink = webhook(&rx.url("https", "receiver.test"), false);
    assert!(
        sink.check_secret(&empty)
            .unwrap_err()
            .to_string()
            .contains("no secret named")
    );
    let d = loopback_deliverer(&pki, TIMEOUT);
    assert_eq!(
        kind(&send(&d, &sink, &empty).await),
        FailureKind::Misconfigured
    );
    assert!(rx.received().is_empty());
}

/// The Python verifier in docs/notifications.md, run on a real delivery: it accepts it, and
/// refuses it with one byte of the body changed or past the replay window.
#[tokio::test]
async fn the_documented_python_verifier_accepts_real_deliveries() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/notifications.md"
    ))
    .unwrap();
    let snippet = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a Python snippet in docs/notifications.md");
    let pki = Pki::new("test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let d = loopback_deliverer(&pki, TIMEOUT);
    let (_t, s) = secrets();
    let sink = webhook(&rx.url("https", "receiver.test"), false);
    assert!(send(&d, &sink, &s).await.is_delivered());
    let got = rx.received().pop().unwrap();
    let check = r#"
import json, sys, time
d = json.load(sys.stdin)
body, secret, sig = d["body"].encode(), d["secret"].encode(), d["sig"]
tampered = body.replace(b"INC-42", b"INC-43")
print(json.dumps([
    verify_jitgate_signature(sig, body, secret),
    verify_jitgate_signature(sig, tampered, secret),
    verify_jitgate_signature(sig, body, secret, now=int(time.time()) + 301),
    verify_jitgate_signature(sig, body, b"other"),
]))
"#;
    let input = serde_json::json!({
        "body": String::from_utf8(got.body.clone()).unwrap(),
        "secret": "whsec-test-key",
        "sig": got.header("jitgate-signature").unwrap(),
    });
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("{snippet}\n{check}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let verdicts: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdicts, [true, false, false, false]);
}
