//! `jit-controller prune` (docs/operations.md, "Retention").

use std::path::PathBuf;

use anyhow::{Result, bail};
use jitgate_controller::retention;
use jitgate_controller::state::{Config, StateDir};

use crate::open_app;

/// `prune [--dry-run] [--archive FILE]`.
pub async fn prune(
    dir: &StateDir,
    dry_run: bool,
    archive: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    let cfg = Config::load(dir)?;
    let checkpoint = jitgate_controller::state::load_checkpoint_key(dir, false)?;
    if let Some(a) = &archive
        && a.exists()
    {
        bail!("{} exists: the archive must be a new file", a.display());
    }
    let keys = retention::Keys {
        trusted: checkpoint.trusted(),
        public_pem: checkpoint.public_pem,
    };
    let app = open_app(dir).await?;
    let report = retention::prune(
        &app.db,
        &retention::Options {
            retention: &cfg.retention,
            notify_days: cfg.notify.retain_delivered_days,
            dry_run,
            archive: archive.as_deref(),
            keys: &keys,
            actor: jitgate_controller::authz::Actor::local(),
            now_ms: jitgate_api::time::now_ms(),
        },
    )
    .await;
    app.close().await;
    let report = report?;
    print_prune(&report, json)?;
    Ok(())
}

fn print_prune(r: &retention::PruneReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!("{:<24} {:>10}  OLDER THAN", "KIND", verb.to_uppercase());
    for k in &r.kinds {
        println!(
            "{:<24} {:>10}  {}",
            k.kind,
            k.rows,
            k.cutoff_time_utc.as_deref().unwrap_or("kept forever")
        );
    }
    let a = &r.activity;
    match (&a.skipped, a.through_seq) {
        (Some(why), _) => println!("activity log: not pruned: {why}"),
        (None, Some(seq)) => println!(
            "activity log: entries up to #{seq} ({} entries, {} checkpoints) {} {}{}",
            a.entries,
            a.checkpoints,
            if r.dry_run {
                "would be archived to"
            } else {
                "archived to"
            },
            a.archive
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
            a.archive_sha256
                .as_ref()
                .map_or_else(String::new, |h| format!(" (sha256 {h})"))
        ),
        (None, None) => println!("activity log: nothing to prune"),
    }
    if let Some(seq) = r.activity_seq {
        println!("recorded as activity entry #{seq}");
    }
    Ok(())
}
