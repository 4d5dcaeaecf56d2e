//! `jit-controller keys`: grant-signing key rotation, and the replacement of the activity
//! log's checkpoint key (docs/operations.md, "Rotation").

use anyhow::{Context, Result};
use clap::Subcommand;
use jitgate_api::terminal::safe;
use jitgate_controller::app::App;
use jitgate_controller::audit;
use jitgate_controller::authz::Actor;
use jitgate_controller::keys::files::KeyDir;
use jitgate_controller::keys::rotation::Rotation;
use jitgate_controller::state::StateDir;

/// The `keys` subcommands (the overview is on `Cmd::Keys`).
#[derive(Subcommand)]
pub enum KeysCmd {
    /// Make a new grant-signing key and announce it to agents (signed by the current key).
    /// Its private half is written to keys/grant-<id>.key (mode 0600): copy it to every
    /// other controller on this database (their /readyz fails until they have it).
    Rotate,
    /// The keys, and during a rotation every active agent: acknowledged, waiting (connected,
    /// blocks the switch), will catch up (offline), or too old to follow.
    Status,
    /// Switch to the announced key now and retire the current one; refused while a
    /// connected agent has not acknowledged, or while a live controller of the cluster
    /// lacks the new key's private half, unless --force (the refusal names those agents or
    /// controllers). Without it the leader switches by itself once every active agent
    /// acknowledged, or after `[keys] switch_grace_seconds`.
    Retire {
        /// Retire even though connected agents have not acknowledged the new key (they
        /// refuse every grant until they reconnect and catch up, or are re-enrolled), or a
        /// live controller lacks its private half (it can sign nothing until it has it).
        #[arg(long)]
        force: bool,
    },
    /// Replace the activity log's checkpoint key (keys/checkpoint.key): a new pair, the old
    /// public half kept as keys/checkpoint-retired-N.pub (the checkpoints it signed keep
    /// verifying), the old private half overwritten and removed; recorded in the activity
    /// log. Export the log first (`jit audit export`) if the old key may be compromised.
    /// Then copy keys/checkpoint.key, checkpoint.pub and the new checkpoint-retired-N.pub to
    /// every other controller on this database and restart each (until then it signs with
    /// the old key, whose checkpoints verify all the same).
    ReplaceCheckpoint,
}

pub async fn run(dir: &StateDir, cmd: KeysCmd, json: bool) -> Result<()> {
    let app = crate::open_app(dir).await?;
    let pem = std::fs::read_to_string(dir.signing_pub())
        .with_context(|| format!("reading {}", dir.signing_pub().display()))?;
    app.keys.seed(&app.db, &pem).await?;
    let rotation = Rotation::new(app.db.clone(), KeyDir::new(dir.signing_key()));
    let grace = app.key_switch_grace;
    let actor = Actor::local();
    let r = match cmd {
        KeysCmd::Rotate => rotation.rotate(&actor).await.map(|r| {
            if json {
                println!("{}", serde_json::json!(r));
            } else {
                println!(
                    "new grant-signing key {} announced (signed by {}); private half in {}",
                    r.key_id, r.signed_by, r.private_key_file
                );
                println!("copy that file to every other controller on this database, then watch `jit-controller keys status`: the leader switches once every active agent acknowledged, or after [keys] switch_grace_seconds (`jit-controller keys retire` switches now)");
            }
        }),
        KeysCmd::Status => rotation.status(grace).await.map(|s| {
            if json {
                println!("{}", serde_json::json!(s));
                return;
            }
            println!("{:<18} {:<8} {:<26} HERE", "KEY", "STATE", "CREATED");
            for k in &s.keys {
                println!(
                    "{:<18} {:<8} {:<26} {}",
                    k.key_id,
                    k.state.as_str(),
                    k.created_time_utc,
                    if k.private_key_here { "yes" } else { "no" }
                );
            }
            if let Some(n) = &s.rotating_to {
                println!("\nrotating to {n}:");
                println!("{:<38} {:<20} {:<6} {:<7} STATE", "AGENT", "VM", "LEVEL", "ONLINE");
                for a in &s.agents {
                    println!(
                        "{:<38} {:<20} {:<6} {:<7} {}",
                        a.agent_id,
                        safe(&a.virtual_machine),
                        a.protocol,
                        a.online,
                        a.state
                    );
                }
                println!("blocking the switch: {}", s.blocking.len());
                println!(
                    "the leader switches once every active agent acknowledged it, or at {} (grace {} s)",
                    s.switch_due_time_utc.as_deref().unwrap_or("-"),
                    s.switch_grace_seconds
                );
                if !s.controllers_lacking_key.is_empty() {
                    println!(
                        "the switch waits for {} controller(s) that lack its private half: {}",
                        s.controllers_lacking_key.len(),
                        safe(&s.controllers_lacking_key.join(", "))
                    );
                }
            }
        }),
        KeysCmd::ReplaceCheckpoint => {
            let r = replace_checkpoint(dir, &app, json).await;
            app.close().await;
            return r;
        }
        KeysCmd::Retire { force } => rotation.retire(&actor, force).await.map(|r| {
            if json {
                println!("{}", serde_json::json!(r));
                return;
            }
            println!(
                "grant-signing key {} retired; {} signs from now on",
                r.retired_key_id, r.current_key_id
            );
            for a in &r.not_acknowledged {
                println!("not acknowledged (forced): {}", safe(&a.to_string()));
            }
            for a in &r.catching_up {
                println!("offline, will catch up when it returns: {}", safe(&a.to_string()));
            }
            for a in &r.need_reenrolment {
                println!("too old to follow, upgrade and re-enrol: {}", safe(&a.to_string()));
            }
            println!("old private key: {}", r.private_key);
        }),
    };
    app.close().await;
    Ok(r?)
}

/// `keys replace-checkpoint`: the files first (the database is not needed to sign), then
/// the activity entry; a failure to record it says what was replaced.
async fn replace_checkpoint(dir: &StateDir, app: &App, json: bool) -> Result<()> {
    let r = jitgate_controller::state::replace_checkpoint_key(dir)?;
    let seq = audit::record_key_replacement(&app.db, &Actor::local(), &r.old_key_id, &r.new_key_id)
        .await
        .with_context(|| {
            format!(
                "checkpoint key {} replaced by {}, but the activity entry was not written",
                r.old_key_id, r.new_key_id
            )
        })?;
    if json {
        let mut v = serde_json::json!(r);
        v["activitySeq"] = seq.into();
        println!("{v}");
        return Ok(());
    }
    println!(
        "checkpoint key {} replaced by {} (activity entry #{seq})",
        r.old_key_id, r.new_key_id
    );
    println!(
        "new key: {} and {}",
        r.private_key.display(),
        r.public_key.display()
    );
    println!("old public half kept: {}", r.retired_public_key.display());
    println!(
        "copy the three files to every other controller on this database and restart each; a controller signs with the key it read at start"
    );
    Ok(())
}
