//! `email`: a multipart/alternative message, plain text and HTML.
//!
//! Headers carry no text that people wrote: the subject is the constant summary (title and
//! request id when the id is a plain token), the Message-ID is the event id, and the only
//! written text is recipients' display names, cleaned to one line and encoded by lettre
//! (RFC 2047 / quoted), so a CR or LF in a name can never start a header. The HTML part
//! escapes every value ([`text::html`]); the plain part carries the same cleaned text
//! (no control or bidi characters) and is sent as `text/plain`, so nothing in it is markup.

use std::time::SystemTime;

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::event::{Event, utc};
use crate::message::Message;
use crate::text;

/// Longest display name kept.
const NAME_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("no recipient")]
    NoRecipient,
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// A recipient whose identity carries an address (the requester, an approver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub display_name: Option<String>,
    pub address: lettre::Address,
}

impl Person {
    /// As a mailbox: the display name cleaned to one line and shortened.
    pub fn mailbox(&self) -> Mailbox {
        let name = self
            .display_name
            .as_deref()
            .map(|n| text::truncate(text::one_line(n).trim(), NAME_MAX))
            .filter(|n| !n.is_empty());
        Mailbox::new(name, self.address.clone())
    }
}

/// RFC 3834: tells auto-responders not to answer.
#[derive(Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_string())
    }
}

/// The plain-text part.
pub fn plain(m: &Message, event: &Event) -> String {
    let mut out = format!("{}\n\n", m.title);
    for f in &m.facts {
        out.push_str(&format!("{}: {}\n", f.label, f.value));
    }
    for p in &m.paragraphs {
        out.push_str(&format!("\n{}:\n", p.label));
        for line in p.body.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push('\n');
    if let Some(cmd) = &m.command {
        out.push_str(&format!("Act on it: {cmd}\n"));
    }
    if let Some(link) = &m.link {
        out.push_str(&format!("Open the request: {}\n", text::one_line(link)));
    }
    out.push_str(&footer(event));
    out
}

fn footer(event: &Event) -> String {
    format!(
        "\n-- \njitgate event {} ({}) at {}\n",
        event.id,
        event.event_type(),
        utc::format(event.time_utc)
    )
}

/// The HTML part: one table of facts, paragraphs as pre-wrapped text, everything escaped.
pub fn html(m: &Message, event: &Event) -> String {
    let e = text::html;
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body style=\"font-family:sans-serif\">\n",
    );
    out.push_str(&format!("<h2>{}</h2>\n<table>\n", e(m.title)));
    for f in &m.facts {
        out.push_str(&format!(
            "<tr><th align=\"left\" valign=\"top\">{}</th><td>{}</td></tr>\n",
            e(f.label),
            e(&f.value)
        ));
    }
    out.push_str("</table>\n");
    for p in &m.paragraphs {
        out.push_str(&format!(
            "<h3>{}</h3>\n<pre style=\"white-space:pre-wrap;font-family:inherit\">{}</pre>\n",
            e(p.label),
            e(&p.body)
        ));
    }
    if let Some(cmd) = &m.command {
        out.push_str(&format!("<p>Act on it: <code>{}</code></p>\n", e(cmd)));
    }
    if let Some(link) = m
        .link
        .as_deref()
        .filter(|l| l.starts_with("https://") || l.starts_with("http://"))
    {
        out.push_str(&format!(
            "<p><a href=\"{}\">Open the request</a></p>\n",
            e(link)
        ));
    }
    out.push_str(&format!(
        "<p style=\"color:#666\">{}</p>\n</body></html>\n",
        e(footer(event).trim().trim_start_matches("-- ").trim())
    ));
    out
}

/// The whole message to `to` (already de-duplicated by the caller or not: duplicates are
/// dropped here).
pub fn message(
    event: &Event,
    from: &Mailbox,
    to: &[Mailbox],
    date: SystemTime,
) -> Result<lettre::Message, EmailError> {
    if to.is_empty() {
        return Err(EmailError::NoRecipient);
    }
    let m = Message::of(event);
    let mut b = lettre::Message::builder()
        .from(from.clone())
        .subject(format!("[jitgate] {}", m.summary))
        .date(date)
        .message_id(Some(format!("<{}@jitgate.invalid>", event.id)))
        .header(AutoSubmitted);
    let mut seen = Vec::new();
    for mb in to {
        if !seen.contains(&mb.email) {
            seen.push(mb.email.clone());
            b = b.to(mb.clone());
        }
    }
    let body = MultiPart::alternative()
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(plain(&m, event)),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html(&m, event)),
        );
    Ok(b.multipart(body)?)
}
