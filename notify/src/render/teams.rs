//! `teams`: a Microsoft Teams workflow webhook ("When a Teams webhook request is received")
//! message carrying one Adaptive Card (schema version 1.4, which Teams renders).
//!
//! Written text never goes into a Markdown field unescaped. Titles and labels (constant text)
//! are `TextBlock`s; every value is a `TextRun` inside a `RichTextBlock`, where the Adaptive
//! Card schema says Markdown is not supported, with its `{{DATE()}}` syntax broken
//! ([`text::adaptive_run`]); the block's fallback, for clients without RichTextBlock, is a
//! TextBlock with the value Markdown-escaped ([`text::adaptive_markdown`]). The link to the
//! request is an `Action.OpenUrl` built by the controller, never a link inside text.

use serde_json::{Value, json};

use crate::message::{Message, Tone};
use crate::text;

/// The Adaptive Card version sent: what Teams renders in workflow posts.
pub const CARD_VERSION: &str = "1.4";

fn run(value: &str) -> Value {
    json!({ "type": "TextRun", "text": text::adaptive_run(value) })
}

/// Written text as a `RichTextBlock` of one `TextRun`. A client that cannot show a
/// RichTextBlock shows its fallback instead: a TextBlock with the same text
/// Markdown-escaped, so even there it stays text.
fn value_block(value: &str) -> Value {
    json!({
        "type": "RichTextBlock",
        "inlines": [run(value)],
        "fallback": { "type": "TextBlock", "text": text::adaptive_markdown(value), "wrap": true },
    })
}

fn label(s: &str) -> Value {
    json!({ "type": "TextBlock", "text": s, "weight": "Bolder", "wrap": true })
}

/// The card alone (the `content` of the attachment).
pub fn card(m: &Message) -> Value {
    let color = match m.tone {
        Tone::Attention => "Attention",
        Tone::Good => "Good",
        Tone::Info => "Default",
    };
    let mut body = vec![json!({
        "type": "TextBlock",
        "text": m.title,
        "weight": "Bolder",
        "size": "Medium",
        "color": color,
        "wrap": true,
    })];
    for f in &m.facts {
        body.push(json!({
            "type": "ColumnSet",
            "spacing": "Small",
            "columns": [
                { "type": "Column", "width": "auto", "items": [label(f.label)] },
                { "type": "Column", "width": "stretch", "items": [value_block(&f.value)] },
            ]
        }));
    }
    for p in &m.paragraphs {
        let mut l = label(p.label);
        l["spacing"] = json!("Medium");
        body.push(l);
        body.push(value_block(&p.body));
    }
    if let Some(cmd) = &m.command {
        body.push(json!({
            "type": "RichTextBlock",
            "spacing": "Medium",
            "inlines": [
                { "type": "TextRun", "text": "Act on it: " },
                { "type": "TextRun", "text": text::adaptive_run(cmd), "fontType": "Monospace" },
            ]
        }));
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
    });
    if let Some(link) = &m.link {
        card["actions"] =
            json!([{ "type": "Action.OpenUrl", "title": "Open request", "url": link }]);
    }
    card
}

/// The workflow webhook body: a `message` with the card as its one attachment.
pub fn payload(m: &Message) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card(m),
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    /// Titles and labels go into Markdown fields unescaped: they must have no Markdown.
    #[test]
    fn constant_text_has_no_markdown() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        for t in EventType::ALL {
            let m = Message::of(&crate::examples::sample(t, "x", now, None));
            let constants = std::iter::once(m.title)
                .chain(m.facts.iter().map(|f| f.label))
                .chain(m.paragraphs.iter().map(|p| p.label));
            for c in constants {
                assert!(
                    c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == ' ' || ch == '-'),
                    "{c:?}"
                );
            }
        }
    }
}
