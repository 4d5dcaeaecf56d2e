//! Email through a real SMTP server (aiosmtpd, in the tests' own Python environment) on
//! loopback: STARTTLS and implicit TLS with authentication from a named secret, text and
//! HTML parts, hostile text and display names inert, and SMTP failures classified.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{Pki, SmtpServer, closed_port};
use jitgate_notify::{
    Deliverer, DeliveryConfig, EgressPolicy, EventType, FailureKind, Outcome, Person, SecretStore,
    Sink, SinkRules, SinkSpec, SmtpRelay, SmtpSecurity, StatusClass, examples,
};
use serde_json::Value;
use time::OffsetDateTime;

const HOSTILE: &str = "<!channel> <http://evil.example|Approve> <script>alert(1)</script> \
<img src=x onerror=alert(1)> &amp; \r\nBcc: victim@example.com\r\nX-Injected: yes\r\n\r\n\
\u{202E}gnp.exe\u{2066} \u{1b}[31m end";

fn relay_to(port: u16, security: SmtpSecurity) -> SmtpRelay {
    SmtpRelay {
        host: "localhost".into(),
        port,
        security,
        hello_name: Some("jitgate.test".into()),
        username: Some("jitgate".into()),
        password_secret: Some("smtp-password".parse().unwrap()),
        from: "jitgate <jit@example.com>".parse().unwrap(),
    }
}

fn deliverer(pki: &Pki, relay: Option<SmtpRelay>) -> Deliverer {
    Deliverer::new(DeliveryConfig {
        egress: EgressPolicy::default(),
        allow_http: false,
        timeout: Duration::from_secs(5),
        roots: pki.roots(),
        smtp: relay,
    })
    .unwrap()
}

fn secrets(password: &str) -> (tempfile::TempDir, SecretStore) {
    let t = tempfile::tempdir().unwrap();
    let s = SecretStore::open(t.path().join("s")).unwrap();
    s.put(
        &"smtp-password".parse().unwrap(),
        format!("{password}\n").as_bytes(),
    )
    .unwrap();
    (t, s)
}

fn sink() -> Sink {
    Sink::from_spec(
        &SinkSpec {
            name: "mail".into(),
            events: vec![],
            scope: None,
            format: "email".into(),
            target: "ops@example.com, sec@example.com".into(),
            secret: None,
            to_group: None,
        },
        &SinkRules::default(),
    )
    .unwrap()
}

fn person(name: &str, address: &str) -> Person {
    Person {
        display_name: Some(name.into()),
        address: address.parse().unwrap(),
    }
}

/// The envelope recipients, sorted.
fn recipients(msg: &Value) -> Vec<&str> {
    let mut r: Vec<&str> = msg["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    r.sort();
    r
}

fn header<'a>(msg: &'a Value, name: &str) -> Vec<&'a str> {
    msg["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn email_over_starttls_and_implicit_tls_with_authentication() {
    let pki = Pki::new("test CA");
    let (_t, s) = secrets("s3cret pass");
    for mode in [SmtpSecurity::StartTls, SmtpSecurity::Implicit] {
        let mut server = SmtpServer::start(&pki, mode, "250 OK").await;
        let d = deliverer(&pki, Some(relay_to(server.port, mode)));
        let portal = url::Url::parse("https://jit.example.com").unwrap();
        let e = examples::sample(
            EventType::RequestPendingApproval,
            "INC-42: kernel patching",
            OffsetDateTime::now_utc(),
            Some(&portal),
        );
        let people = [
            person("Alice Ünicode", "alice@example.com"),
            person("Bob", "sec@example.com"),
        ];
        let o = d.deliver(&sink(), &e, &s, &people, SystemTime::now()).await;
        assert_eq!(
            o,
            Outcome::Delivered {
                status: StatusClass::Success
            },
            "{mode:?}"
        );
        let m = server.next().await;
        assert_eq!(m["tls"], true, "{mode:?}");
        assert_eq!(m["login"], "jitgate");
        assert_eq!(m["mail_from"], "jit@example.com");
        let rcpt = recipients(&m);
        // sec@example.com is both a fixed address and Bob's: one copy.
        assert_eq!(
            rcpt,
            ["alice@example.com", "ops@example.com", "sec@example.com"]
        );
        assert_eq!(
            header(&m, "subject"),
            ["[jitgate] Approval needed (request example-1)"]
        );
        assert_eq!(header(&m, "auto-submitted"), ["auto-generated"]);
        assert_eq!(
            header(&m, "message-id"),
            [format!("<{}@jitgate.invalid>", e.id).as_str()]
        );
        let to = header(&m, "to")[0];
        assert!(to.contains("Alice Ünicode <alice@example.com>"), "{to}");
        let raw = m["raw_header_block"].as_str().unwrap();
        assert!(raw.is_ascii(), "{raw}");
        let text = m["text"].as_str().unwrap();
        assert!(
            text.contains("Justification:\n  INC-42: kernel patching"),
            "{text}"
        );
        assert!(text.contains("Act on it: jit approve example-1"), "{text}");
        let html = m["html"].as_str().unwrap();
        assert!(
            html.contains("<a href=\"https://jit.example.com/requests/example-1\">"),
            "{html}"
        );
        assert!(html.contains(&e.id.to_string()));
    }
}

#[tokio::test]
async fn hostile_text_is_inert_in_email() {
    let pki = Pki::new("test CA");
    let (_t, s) = secrets("s3cret pass");
    let mut server = SmtpServer::start(&pki, SmtpSecurity::StartTls, "250 OK").await;
    let d = deliverer(&pki, Some(relay_to(server.port, SmtpSecurity::StartTls)));
    let e = examples::sample(
        EventType::RequestDenied,
        HOSTILE,
        OffsetDateTime::now_utc(),
        None,
    );
    let people = [
        person(HOSTILE, "eve@example.com"),
        person("Mallory\r\nBcc: victim@example.com", "mallory@example.com"),
    ];
    let o = d.deliver(&sink(), &e, &s, &people, SystemTime::now()).await;
    assert!(o.is_delivered(), "{o:?}");
    let m = server.next().await;
    let names: Vec<String> = m["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
        .collect();
    for n in &names {
        assert!(
            [
                "from",
                "to",
                "subject",
                "date",
                "message-id",
                "auto-submitted",
                "mime-version",
                "content-type"
            ]
            .contains(&n.as_str()),
            "unexpected header {n}: {names:?}"
        );
        assert_eq!(names.iter().filter(|x| *x == n).count(), 1, "{n} twice");
    }
    let raw = m["raw_header_block"].as_str().unwrap();
    assert!(raw.is_ascii());
    for line in raw.split("\r\n") {
        let l = line.to_ascii_lowercase();
        assert!(
            !l.starts_with("bcc:") && !l.starts_with("x-injected:"),
            "{raw}"
        );
    }
    let rcpt = recipients(&m);
    assert_eq!(
        rcpt,
        [
            "eve@example.com",
            "mallory@example.com",
            "ops@example.com",
            "sec@example.com"
        ]
    );
    assert_eq!(
        header(&m, "subject"),
        ["[jitgate] Access request denied (request example-1)"]
    );
    // The display name arrives as one (shortened) line of text.
    let to = header(&m, "to")[0];
    assert!(
        to.contains("<eve@example.com>") && to.contains("<!channel>"),
        "{to}"
    );
    // (The parser puts spaces where lettre split encoded words; compare without them.)
    let squeezed = to.replace(' ', "");
    assert!(
        squeezed.contains("\"MalloryBcc:victim@example.com\"<mallory@example.com>"),
        "{to}"
    );
    let html = m["html"].as_str().unwrap();
    for bad in [
        "<script",
        "<img",
        "<http://evil",
        "<!channel",
        "\u{202E}",
        "\u{1b}",
    ] {
        assert!(!html.contains(bad), "{bad:?} in {html}");
    }
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && html.contains("&amp;amp;"),
        "{html}"
    );
    let text = m["text"].as_str().unwrap();
    for bad in ["\u{202E}", "\u{2066}", "\u{1b}", "\r"] {
        assert!(!text.contains(bad), "{bad:?} in {text}");
    }
    // In the plain part the written text is there, indented under its label.
    assert!(text.contains("  Bcc: victim@example.com\n"), "{text}");
}

#[tokio::test]
async fn smtp_failures_give_their_kind() {
    let pki = Pki::new("test CA");
    let (_t, s) = secrets("s3cret pass");
    let (_t2, wrong) = secrets("not the password");
    let later = SmtpServer::start(&pki, SmtpSecurity::StartTls, "451 4.3.0 Try again later").await;
    let never = SmtpServer::start(&pki, SmtpSecurity::Implicit, "550 5.7.1 Not accepted").await;
    let e = examples::sample(
        EventType::AccessApplied,
        "x",
        OffsetDateTime::now_utc(),
        None,
    );
    let send = |d: Deliverer, secrets: SecretStore| {
        let e = e.clone();
        async move {
            d.deliver(&sink(), &e, &secrets, &[], SystemTime::now())
                .await
        }
    };
    let kind = |o: Outcome| o.failure().unwrap_or_else(|| panic!("{o:?}")).kind;
    let f = send(
        deliverer(&pki, Some(relay_to(later.port, SmtpSecurity::StartTls))),
        s.clone(),
    )
    .await;
    assert_eq!(f.failure().unwrap().status, Some(StatusClass::ClientError));
    assert_eq!(kind(f), FailureKind::Smtp4xx);
    let f = send(
        deliverer(&pki, Some(relay_to(never.port, SmtpSecurity::Implicit))),
        s.clone(),
    )
    .await;
    assert_eq!(kind(f), FailureKind::Smtp5xx);
    // Wrong password: 535, permanent.
    let f = send(
        deliverer(&pki, Some(relay_to(later.port, SmtpSecurity::StartTls))),
        wrong,
    )
    .await;
    assert_eq!(kind(f), FailureKind::Smtp5xx);
    // A relay whose certificate we do not trust.
    let stranger = Pki::new("another CA");
    let f = send(
        deliverer(
            &stranger,
            Some(relay_to(never.port, SmtpSecurity::Implicit)),
        ),
        s.clone(),
    )
    .await;
    assert_eq!(kind(f), FailureKind::Tls);
    let f = send(
        deliverer(
            &stranger,
            Some(relay_to(later.port, SmtpSecurity::StartTls)),
        ),
        s.clone(),
    )
    .await;
    assert_eq!(kind(f), FailureKind::Tls);
    let port = closed_port().await;
    let f = send(
        deliverer(&pki, Some(relay_to(port, SmtpSecurity::StartTls))),
        s.clone(),
    )
    .await;
    assert_eq!(kind(f), FailureKind::Refused);
    let f = send(deliverer(&pki, None), s.clone()).await;
    assert_eq!(kind(f), FailureKind::Misconfigured);
    let (_t3, empty) = {
        let t = tempfile::tempdir().unwrap();
        let st = SecretStore::open(t.path().join("s")).unwrap();
        (t, st)
    };
    let f = send(
        deliverer(&pki, Some(relay_to(later.port, SmtpSecurity::StartTls))),
        empty,
    )
    .await;
    assert_eq!(kind(f), FailureKind::Misconfigured);
}
