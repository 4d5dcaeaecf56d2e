//! `jit-controller session`: people's sign-in sessions listed and ended on the host.

use anyhow::Result;
use clap::Subcommand;
use jitgate_api::terminal::safe;
use jitgate_controller::authz::Caller;
use jitgate_controller::state::StateDir;

#[derive(Subcommand)]
pub enum SessionCmd {
    /// Open sessions, newest first (never their credentials).
    List {
        /// Ended and expired sessions too.
        #[arg(long)]
        all: bool,
    },
    /// End a session now (ses_...): its credential stops working at once, and the person
    /// must sign in again.
    Revoke { id: String },
}

pub async fn run(dir: &StateDir, cmd: SessionCmd, json: bool) -> Result<()> {
    crate::with_app(dir, async |app| {
        let local = Caller::local();
        match cmd {
            SessionCmd::List { all } => {
                print_sessions(&app.sessions.list(&local, all).await?, json)
            }
            SessionCmd::Revoke { id } => {
                app.sessions.revoke(&local, &id).await?;
                if !json {
                    println!("revoked {}", safe(&id));
                }
                Ok(())
            }
        }
    })
    .await
}

fn print_sessions(v: &[jitgate_api::SessionView], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<24} {:<6} {:<25} {:<25} {:<16} ROLES",
        "ID", "PERSON", "CLIENT", "EXPIRES", "ENDED", "REASON"
    );
    for s in v {
        let roles: Vec<String> = s
            .grants
            .iter()
            .map(|g| format!("{} on {}", g.role, g.scope))
            .collect();
        println!(
            "{:<36} {:<24} {:<6} {:<25} {:<25} {:<16} {}",
            s.id,
            safe(&s.display_name),
            s.client,
            s.expires_time_utc,
            s.ended_time_utc.as_deref().unwrap_or("-"),
            s.end_reason.as_ref().map_or("-", |r| r.as_str()),
            if roles.is_empty() {
                "-".to_string()
            } else {
                safe(&roles.join(", ")).into_owned()
            }
        );
        println!("    {}", safe(&s.principal));
    }
    Ok(())
}
