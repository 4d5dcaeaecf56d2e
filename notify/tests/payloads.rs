//! Slack and Teams payloads: valid against their schemas (Slack's Block Kit subset written
//! from its reference, Microsoft's published Adaptive Card schema), hostile text inert, and
//! both delivered for real to a local HTTPS receiver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{Pki, Receiver, loopback_deliverer, python, python_script};
use jitgate_notify::event::{EventDetails, PortInfo, Protocol, VmPorts};
use jitgate_notify::message::Message;
use jitgate_notify::render::{slack, teams};
use jitgate_notify::{Event, SecretStore, Sink, SinkRules, SinkSpec, examples};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Everything a person could write to make a message do more than show text.
const HOSTILE: &str = "<!channel> <!here|here> <@U0123ABCD> <#C0123|general> \
<http://evil.example|Approve here> [Approve](http://evil.example) **urgent** _x_ \
{{DATE(2017-02-14T06:08:39Z, SHORT)}} <script>alert(1)</script> <img src=x onerror=alert(1)> \
&amp; & \r\nBcc: victim@example.com\r\n\u{202E}gnp.exe\u{2066} \u{0}\u{1b}[31m end";

fn portal() -> url::Url {
    url::Url::parse("https://jit.example.com/").unwrap()
}

fn events(written: &str) -> Vec<Event> {
    let now = OffsetDateTime::now_utc();
    let mut all = examples::all(written, now, Some(&portal()));
    // A request across many VMs and ports, with a long justification: the length limits.
    let mut big = examples::sample(
        jitgate_notify::EventType::RequestPendingApproval,
        &written.repeat(40),
        now,
        Some(&portal()),
    );
    if let EventDetails::RequestPendingApproval { request, .. } = &mut big.details {
        request.virtual_machines = (0..12)
            .map(|i| VmPorts {
                id: format!("vm{i}"),
                resource_group: "prod".into(),
                ports: (0..20)
                    .map(|p| PortInfo {
                        number: 2000 + p,
                        protocol: Protocol::Any,
                        allowed_source_address_prefixes: vec!["2001:db8::/64".into()],
                        end_time_utc: Some(now),
                        max_connections: jitgate_api::MaxConnections::new(65_535),
                    })
                    .collect(),
            })
            .collect();
    }
    all.push(big);
    all
}

/// Runs tests/python/check_schemas.py on the payloads; one list of errors per payload.
fn validate(slack: &[Value], teams: &[Value]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut child = Command::new(python())
        .arg(python_script("check_schemas.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({ "slack": slack, "teams": teams }).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lists = |k: &str| -> Vec<Vec<String>> { serde_json::from_value(v[k].clone()).unwrap() };
    (lists("slack"), lists("teams"))
}

#[test]
fn slack_and_teams_payloads_follow_their_schemas() {
    let mut s = Vec::new();
    let mut t = Vec::new();
    for written in ["INC-42: kernel patching", HOSTILE] {
        for e in events(written) {
            let m = Message::of(&e);
            s.push(slack::payload(&m));
            // The card's structure does not depend on the text; the Adaptive Card schema is
            // slow to check (about 0.2 s a card), so Teams is checked on the hostile set.
            if written == HOSTILE {
                t.push(teams::payload(&m));
            }
        }
    }
    let n = (s.len(), t.len());
    // Controls: payloads the schemas must reject, so a pass above means something.
    let mut long_header = s[0].clone();
    long_header["blocks"][0]["text"]["text"] = json!("x".repeat(151));
    let mut unknown_block = s[0].clone();
    unknown_block["blocks"][1] = json!({"type": "rich_text_unknown"});
    let mut eleven_fields = s[0].clone();
    eleven_fields["blocks"][1]["fields"] = json!(vec![json!({"type": "mrkdwn", "text": "x"}); 11]);
    s.extend([long_header, unknown_block, eleven_fields]);
    let mut bad_run = t[0].clone();
    bad_run["attachments"][0]["content"]["body"][1]["columns"][1]["items"][0]["inlines"][0]["fontType"] =
        json!("Comic");
    let mut bad_version = t[0].clone();
    bad_version["attachments"][0]["content"]["version"] = json!(1.4);
    let mut bad_action = t[0].clone();
    bad_action["attachments"][0]["content"]["actions"][0]["url"] = json!(7);
    t.extend([bad_run, bad_version, bad_action]);

    let (se, te) = validate(&s, &t);
    for (i, errs) in se.iter().take(n.0).enumerate() {
        assert!(errs.is_empty(), "slack payload {i}: {errs:?}\n{}", s[i]);
    }
    for (i, errs) in te.iter().take(n.1).enumerate() {
        assert!(errs.is_empty(), "teams payload {i}: {errs:?}\n{}", t[i]);
    }
    for (i, errs) in se.iter().enumerate().skip(n.0) {
        assert!(!errs.is_empty(), "slack control {i} passed: {}", s[i]);
    }
    for (i, errs) in te.iter().enumerate().skip(n.1) {
        assert!(!errs.is_empty(), "teams control {i} passed: {}", t[i]);
    }
}

/// Every string in a JSON value, with the key it sits under.
fn strings<'a>(
    v: &'a Value,
    key: &'a str,
    out: &mut Vec<(&'a str, &'a Value, &'a str)>,
    parent: &'a Value,
) {
    match v {
        Value::String(s) => out.push((key, parent, s)),
        Value::Array(a) => a.iter().for_each(|x| strings(x, key, out, v)),
        Value::Object(o) => o.iter().for_each(|(k, x)| strings(x, k, out, v)),
        _ => {}
    }
}

fn bidi_or_control(s: &str) -> bool {
    s.chars().any(|c| {
        matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
            || (c.is_control() && c != '\n')
    })
}

#[test]
fn hostile_text_is_inert_in_slack_and_teams() {
    for e in events(HOSTILE) {
        let m = Message::of(&e);
        let s = slack::payload(&m);
        let mut all = Vec::new();
        strings(&s, "", &mut all, &s);
        for (key, parent, text) in &all {
            assert!(!bidi_or_control(text), "{key}: {text:?}");
            if *key == "text" && parent["type"] == "mrkdwn" {
                // No Slack control sequence survives: every < > & is an entity (a `>` opening
                // a line is the quote the renderer puts around written paragraphs).
                let unquoted: Vec<&str> = text
                    .lines()
                    .map(|l| l.strip_prefix('>').unwrap_or(l))
                    .collect();
                let stripped = unquoted
                    .join("\n")
                    .replace("&lt;", "")
                    .replace("&gt;", "")
                    .replace("&amp;", "");
                assert!(!stripped.contains(['<', '>', '&']), "{text}");
            }
            if *key == "url" {
                assert!(
                    text.starts_with("https://jit.example.com/requests/"),
                    "{text}"
                );
            }
        }
        let joined = s.to_string();
        assert!(
            !joined.contains("<!channel>") && !joined.contains("<http://evil"),
            "{joined}"
        );

        let t = teams::payload(&m);
        let mut all = Vec::new();
        strings(&t, "", &mut all, &t);
        for (key, parent, text) in &all {
            assert!(!bidi_or_control(text), "{key}: {text:?}");
            if *key == "text" && parent["type"] == "TextBlock" {
                // Markdown fields hold the crate's constant text, or written text with every
                // Markdown character escaped (the fallbacks of the RichTextBlocks).
                let mut rest = String::new();
                let mut chars = text.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else {
                        rest.push(c);
                    }
                }
                let live = [
                    '[', ']', '(', ')', '*', '_', '<', '>', '{', '`', '#', '!', '|', '~',
                ];
                assert!(!rest.contains(live), "{text}");
            }
            if *key == "text" {
                assert!(!text.contains("{{DATE"), "{text}");
            }
            if *key == "url" {
                assert!(
                    text.starts_with("https://jit.example.com/requests/"),
                    "{text}"
                );
            }
        }
    }
    // The hostile text is there, as text: in Slack escaped, in Teams verbatim in a TextRun.
    let e = &events(HOSTILE)[0];
    let s = slack::payload(&Message::of(e)).to_string();
    assert!(
        s.contains("&lt;!channel&gt;") && s.contains("&lt;http://evil.example|Approve here&gt;"),
        "{s}"
    );
    let t = teams::payload(&Message::of(e)).to_string();
    assert!(
        t.contains("[Approve](http://evil.example) **urgent**"),
        "{t}"
    );
    assert!(
        t.contains(r"\\[Approve\\]\\(http://evil\\.example\\) \\*\\*urgent\\*\\*"),
        "{t}"
    );
}

#[tokio::test]
async fn slack_and_teams_messages_are_posted_as_rendered() {
    let pki = Pki::new("test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let d = loopback_deliverer(&pki, Duration::from_secs(5));
    let t = tempfile::tempdir().unwrap();
    let secrets = SecretStore::open(t.path().join("s")).unwrap();
    let e = &events(HOSTILE)[0];
    for (format, path) in [
        ("slack", "/services/T000/B000/SECRET"),
        ("teams", "/workflows/1/triggers/manual/paths/invoke"),
    ] {
        let sink = Sink::from_spec(
            &SinkSpec {
                name: format.into(),
                events: vec![],
                scope: None,
                format: format.into(),
                target: format!("https://receiver.test:{}{path}?sig=SECRET", rx.addr.port()),
                secret: None,
                to_group: None,
            },
            &SinkRules::default(),
        )
        .unwrap();
        assert!(!format!("{:?}", sink).contains("SECRET"));
        let o = d.deliver(&sink, e, &secrets, &[], SystemTime::now()).await;
        assert!(o.is_delivered(), "{format}: {o:?}");
        let got = rx.received().pop().unwrap();
        assert_eq!(got.path, path);
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(got.header("jitgate-signature"), None);
        let want = if format == "slack" {
            slack::payload(&Message::of(e))
        } else {
            teams::payload(&Message::of(e))
        };
        assert_eq!(got.json(), want);
    }
}
