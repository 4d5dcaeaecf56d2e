//! `slack`: a Slack incoming-webhook message with Block Kit blocks.
//!
//! Layout: a `header` (constant title), `section`s with the facts as mrkdwn fields, one
//! `section` per paragraph (quoted), a `context` line with the CLI command, and an `actions`
//! block with a link button to the request. Every dynamic string is [`text::slack`]-escaped
//! (`&`, `<`, `>`), so `<!channel>`, `<@U123>` and `<http://evil|harmless>` show as text;
//! the top-level `text` (the notification preview) carries only the constant summary.
//! Lengths follow Slack's documented limits (header 150, field 2000, section 3000, button
//! text 75, URL 3000, 50 blocks, 10 fields per section).

use serde_json::{Value, json};

use crate::message::{Message, Tone};
use crate::render::fit;
use crate::text;

const HEADER_MAX: usize = 150;
const FIELD_MAX: usize = 2000;
const SECTION_MAX: usize = 3000;
const FIELDS_PER_SECTION: usize = 10;
const URL_MAX: usize = 3000;

pub fn payload(m: &Message) -> Value {
    let emoji = match m.tone {
        Tone::Attention => ":warning:",
        Tone::Good => ":white_check_mark:",
        Tone::Info => ":information_source:",
    };
    let mut blocks = vec![json!({
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": text::truncate(&format!("{emoji} {}", m.title), HEADER_MAX),
            "emoji": true,
        }
    })];
    for chunk in m.facts.chunks(FIELDS_PER_SECTION) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|f| {
                let label = format!("*{}*\n", f.label);
                let budget = FIELD_MAX - label.chars().count();
                json!({
                    "type": "mrkdwn",
                    "text": format!("{label}{}", fit(&f.value, budget, text::slack)),
                    "verbatim": true,
                })
            })
            .collect();
        blocks.push(json!({ "type": "section", "fields": fields }));
    }
    for p in &m.paragraphs {
        let label = format!("*{}*\n", p.label);
        let budget = SECTION_MAX - label.chars().count();
        blocks.push(json!({
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": format!("{label}{}", fit(&p.body, budget, text::slack_quote)),
                "verbatim": true,
            }
        }));
    }
    if let Some(cmd) = &m.command {
        blocks.push(json!({
            "type": "context",
            "elements": [{
                "type": "mrkdwn",
                "text": fit(cmd, SECTION_MAX - 20, |c| format!("Act on it: `{}`", text::slack(c))),
                "verbatim": true,
            }]
        }));
    }
    if let Some(link) = m.link.as_deref().filter(|l| l.len() <= URL_MAX) {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": { "type": "plain_text", "text": "Open request" },
                "url": link,
                "action_id": "jitgate-open-request",
            }]
        }));
    }
    json!({
        "text": text::slack(&m.summary),
        "blocks": blocks,
    })
}
