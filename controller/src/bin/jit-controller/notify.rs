//! `jit-controller notify`: the notification delivery queue per sink, and dead deliveries
//! attempted again (docs/notifications.md).

use anyhow::Result;
use clap::Subcommand;
use jitgate_api::terminal::safe;
use jitgate_controller::outbox;
use jitgate_controller::state::StateDir;

#[derive(Subcommand)]
pub enum NotifyCmd {
    /// Deliveries per sink: queued, retrying, delivered, dead, and the last failure.
    Status,
    /// Attempt dead deliveries again (a running controller picks them up within a second).
    Retry {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
    },
}

pub async fn run(dir: &StateDir, cmd: NotifyCmd, json: bool) -> Result<()> {
    crate::with_app(dir, async |app| match cmd {
        NotifyCmd::Status => print_notify(&outbox::status::status(&app.db).await?, json),
        NotifyCmd::Retry { sink } => {
            let n = outbox::status::retry(&app.db, sink.as_deref()).await?;
            if json {
                println!("{}", serde_json::json!({"retried": n}));
            } else {
                println!("{n} dead deliveries will be attempted again");
            }
            Ok(())
        }
    })
    .await
}

fn print_notify(v: &[jitgate_api::SinkStatus], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:>8} {:>9} {:>10} {:>6}  {:<20}  {:<20}  LAST FAILURE",
        "SINK",
        "QUEUED",
        "RETRYING",
        "IN FLIGHT",
        "DELIVERED",
        "DEAD",
        "OLDEST WAITING",
        "LAST DELIVERED"
    );
    let or_dash = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
    for s in v {
        let last = s.last_failure.as_ref().map_or_else(
            || "-".to_string(),
            |f| {
                format!(
                    "{} {} at {}",
                    f.kind,
                    f.status_class.as_deref().unwrap_or(""),
                    f.time_utc
                )
            },
        );
        println!(
            "{:<24} {:>8} {:>8} {:>9} {:>10} {:>6}  {:<20}  {:<20}  {last}",
            safe(&s.name),
            s.queued,
            s.retrying,
            s.in_flight,
            s.delivered,
            s.dead,
            or_dash(&s.oldest_pending_utc),
            or_dash(&s.last_delivered_utc)
        );
    }
    Ok(())
}
