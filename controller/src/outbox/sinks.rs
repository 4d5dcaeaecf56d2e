//! The sinks of controller.toml (`[[notify.sinks]]`): checked at start (format, target,
//! secret) and stored in `notify_sinks`; those the file no longer names are removed with
//! their deliveries. Sinks made otherwise (the API, later) are left alone.

use jitgate_notify::{SecretStore, Sink, SinkRules, SinkSpec};

use crate::error::{Error, Result};
use crate::store::db::Db;
use crate::store::notify::{self, CONFIG_SINK_OWNER};

/// Checks `specs` and stores them (one transaction). A bad sink stops the start with its
/// reason; nothing is stored then.
pub async fn sync(
    db: &Db,
    specs: &[SinkSpec],
    rules: &SinkRules,
    secrets: &SecretStore,
) -> Result<Vec<Sink>> {
    let mut checked = Vec::with_capacity(specs.len());
    for spec in specs {
        let sink = Sink::from_spec(spec, rules)
            .map_err(|e| Error::Internal(format!("notify.sinks: {e}")))?;
        sink.check_secret(secrets)
            .map_err(|e| Error::Internal(format!("notify.sinks {}: {e}", sink.name)))?;
        if checked.iter().any(|s: &Sink| s.name == sink.name) {
            return Err(Error::Internal(format!(
                "notify.sinks: the name {} is used twice",
                sink.name
            )));
        }
        checked.push(sink);
    }
    let mut w = db.begin().await?;
    let stored = notify::sinks(w.conn()).await?;
    for row in &stored {
        let named = checked.iter().any(|s| s.name == row.name);
        if row.created_by == CONFIG_SINK_OWNER && !named {
            notify::remove_sink(&mut w, &row.name).await?;
            tracing::info!(sink = %row.name, "notification sink removed from controller.toml");
        } else if named && row.created_by != CONFIG_SINK_OWNER {
            return Err(Error::Internal(format!(
                "notify.sinks: {} names a sink made by {}; rename one",
                row.name, row.created_by
            )));
        }
    }
    for sink in &checked {
        let spec = serde_json::to_string(&sink.to_spec())?;
        notify::put_sink(&mut w, &sink.name, &spec, CONFIG_SINK_OWNER).await?;
    }
    w.commit().await?;
    for sink in &checked {
        let view = sink.view();
        tracing::info!(sink = %view.name, format = view.format, "notification sink from controller.toml");
    }
    Ok(checked)
}
