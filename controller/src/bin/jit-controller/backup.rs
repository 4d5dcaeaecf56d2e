//! `jit-controller backup` and `restore` (docs/operations.md, "Backup and restore").

use std::path::Path;

use anyhow::{Context, Result, bail};
use jitgate_controller::state::{Config, StateDir};
use jitgate_controller::store::{activity, backup};

use crate::open_app;

/// `backup FILE`: an online, consistent backup of the database.
pub async fn backup(dir: &StateDir, file: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(dir)?;
    let url = cfg.database_url(dir);
    if cfg.database_url.is_none() && !dir.db().exists() {
        bail!("{} does not exist: nothing to back up", dir.db().display());
    }
    let summary = write_backup(&url, file).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "backup written to {}: schema {}, {} tables, {} rows, {} bytes, activity \
             log up to #{}",
            file.display(),
            summary.header.schema,
            summary.tables,
            summary.rows,
            summary.bytes,
            summary.header.activity_head
        );
        println!("sha256 {}", summary.sha256);
    }
    Ok(())
}

/// `restore FILE`: into an empty database, then the activity log verified.
pub async fn restore(dir: &StateDir, file: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(dir)?;
    let url = cfg.database_url(dir);
    // The key that verifies the restored checkpoints; checked before anything is written.
    let keys = jitgate_controller::state::load_checkpoint_key(dir, false)?.trusted();
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let new_file = cfg.database_url.is_none() && !dir.db().exists();
    let restored = backup::restore(&url, std::io::BufReader::new(f)).await;
    if restored.is_err() && new_file {
        // The SQLite file the restore created holds nothing: leave no trace.
        for suffix in ["", "-wal", "-shm"] {
            let mut p = dir.db().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
    let summary = match restored {
        Ok(s) => s,
        Err(e @ backup::BackupError::NotEmpty(_)) => bail!(
            "restoring {}: nothing was written: {e} ({})",
            file.display(),
            if cfg.database_url.is_none() {
                format!(
                    "move {} and its -wal and -shm files away first",
                    dir.db().display()
                )
            } else {
                "create an empty PostgreSQL database and name it in database_url".into()
            }
        ),
        Err(e) => bail!("restoring {}: nothing was written: {e}", file.display()),
    };
    // Opening the database applies the migrations newer than the backup.
    let app = open_app(dir).await?;
    let report = activity::verify(app.db.pool(), &keys).await;
    app.close().await;
    let report = report?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"restored": summary, "verify": report})
            )?
        );
    } else {
        println!(
            "restored {}: schema {}, {} tables, {} rows, taken {} from {}",
            file.display(),
            summary.header.schema,
            summary.tables,
            summary.rows,
            summary.header.created_time_utc,
            summary.header.source
        );
        println!(
            "activity log: {} entries, {} signed checkpoints, {}",
            report.entries,
            report.checkpoints,
            if report.ok { "verified" } else { "FAILS" }
        );
    }
    if !report.ok {
        bail!(
            "the restored activity log does not verify at #{}: {}",
            report.first_bad_seq.unwrap_or(0),
            report.problem.as_deref().unwrap_or("unknown problem")
        );
    }
    Ok(())
}

/// Writes a backup of `url` to `file` (new, mode 0600, synced); removes it on failure.
async fn write_backup(url: &str, file: &std::path::Path) -> Result<backup::Summary> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    let mut w = std::io::BufWriter::new(f);
    let written = backup::dump_url(url, &mut w)
        .await
        .map_err(anyhow::Error::from);
    let synced = written.and_then(|s| {
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(s)
    });
    if synced.is_err() {
        let _ = std::fs::remove_file(file);
    }
    synced.with_context(|| format!("backing up to {}", file.display()))
}
