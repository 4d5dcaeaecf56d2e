//! `jit keys`: the grant-signing keys (admins on `*`): each key's state and times, and during
//! a rotation how many agents acknowledged the announced key, which have not, and when the
//! leader switches anyway.

use jitgate_api::KeyStatus;

use crate::client::Client;
use crate::exit::R;
use crate::output::Out;
use crate::table::{Table, col, num, or_dash};
use crate::text::safe;

const KEYS: Table = Table::new(&[
    col("KEY", 16),
    col("STATE", 8),
    col("CREATED (UTC)", 24),
    col("ANNOUNCED (UTC)", 24),
    col("SWITCHED (UTC)", 24),
    col("RETIRED (UTC)", 24),
    num("ACKED", 5),
]);

const WAITING: Table = Table::new(&[
    col("AGENT", 36),
    col("VM", 20),
    num("LEVEL", 5),
    col("ONLINE", 6),
    col("STATE", 0),
])
.indent("  ");

pub async fn run(c: &Client, out: Out) -> R<()> {
    let s = c.keys().await?;
    out.show(&s, print)
}

pub fn print(s: &KeyStatus) {
    KEYS.print_header();
    for k in &s.keys {
        KEYS.print_row(&[
            k.key_id.clone(),
            k.state.to_string(),
            k.created_time_utc.clone(),
            or_dash(k.announced_time_utc.as_deref()),
            or_dash(k.switched_time_utc.as_deref()),
            or_dash(k.retired_time_utc.as_deref()),
            or_dash(k.acknowledged),
        ]);
    }
    let Some(next) = &s.rotating_to else {
        println!("\nno rotation under way");
        return;
    };
    println!(
        "\nrotating to {}: the leader switches once every active agent acknowledged it, or at {} (grace {} s)",
        safe(next),
        safe(s.switch_due_time_utc.as_deref().unwrap_or("-")),
        s.switch_grace_seconds
    );
    if !s.controllers_lacking_key.is_empty() {
        let names: Vec<String> = s
            .controllers_lacking_key
            .iter()
            .map(|c| safe(c).into_owned())
            .collect();
        println!(
            "the switch waits for {} controller(s) that lack its private half: {}",
            names.len(),
            names.join(", ")
        );
    }
    let waiting: Vec<_> = s
        .keys
        .iter()
        .filter(|k| &k.key_id == next)
        .flat_map(|k| &k.not_acknowledged)
        .collect();
    if waiting.is_empty() {
        println!("every active agent acknowledged it");
        return;
    }
    println!(
        "{} active agent(s) have not acknowledged it:",
        waiting.len()
    );
    WAITING.print_header();
    for a in waiting {
        WAITING.print_row(&[
            a.agent_id.clone(),
            a.virtual_machine.clone(),
            a.protocol.to_string(),
            if a.online { "yes" } else { "no" }.to_string(),
            a.state.to_string(),
        ]);
    }
}
