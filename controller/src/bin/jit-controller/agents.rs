//! `jit-controller agents`: the agent fleet as the cluster sees it.

use anyhow::Result;
use jitgate_api::terminal::safe;
use jitgate_controller::authz::Caller;
use jitgate_controller::state::StateDir;

pub async fn run(dir: &StateDir, json: bool) -> Result<()> {
    let v = crate::with_app(dir, async |app| {
        Ok(app.fleet.agents(&Caller::local()).await?)
    })
    .await?;
    print_agents(&v, json)
}

fn print_agents(v: &[jitgate_api::Agent], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<36} {:<8} {:<25} {:<20} {:<24} {:>6} AUDIT",
        "VM", "AGENT", "STATE", "LAST SEEN", "INTERFACES", "PROTECTED", "GRANTS"
    );
    for a in v {
        println!(
            "{:<16} {:<36} {:<8} {:<25} {:<20} {:<24} {:>6} {}",
            safe(&a.virtual_machine),
            a.agent_id,
            a.connection.as_str(),
            a.last_seen_time_utc.as_deref().unwrap_or("-"),
            if a.interfaces.is_empty() {
                "-".to_string()
            } else {
                safe(&a.interfaces.join(",")).into_owned()
            },
            if a.protected_ports.is_empty() {
                "-".to_string()
            } else {
                safe(&a.protected_ports.join(",")).into_owned()
            },
            a.active_grants
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            match (&a.audit_seq, &a.audit_head) {
                (Some(s), Some(h)) => {
                    // The agent's chain head, as the agent sent it: its first 12 characters.
                    let head: String = h.chars().take(12).collect();
                    format!("{s} {}", safe(&head))
                }
                _ => "-".into(),
            }
        );
    }
    Ok(())
}
