//! `jit vm show VM`: one VM as the controller gives it (`GET /virtualMachines/{vm}`): its
//! addresses, its effective JIT policy, its agent, and where jitgate's program runs on each
//! of its interfaces.

use clap::Subcommand;
use jitgate_api::{InterfaceHook, VmAgent, VmDetail};

use crate::client::Client;
use crate::cmd::policy::print_policy;
use crate::exit::R;
use crate::output::Out;
use crate::table::{Table, col, or_dash};
use crate::text::safe;

#[derive(Subcommand)]
pub enum VmCmd {
    /// One VM: its resource group and addresses, its effective JIT policy (ports, sources,
    /// longest window, approval), its agent (state, last heard, protocol level) and one line
    /// per interface with jitgate's hook, its position and the programs ahead of it.
    /// `--json`: the API's object.
    Show {
        /// The VM's name.
        vm: String,
    },
}

const HOOKS: Table = Table::new(&[
    col("INTERFACE", 12),
    col("HOOK", 24),
    col("POSITION", 8),
    col("AHEAD", 40),
    col("PROBLEM", 0),
])
.indent("  ");

pub async fn run(c: &Client, cmd: &VmCmd, out: Out) -> R<()> {
    match cmd {
        VmCmd::Show { vm } => {
            let d = c.vm(vm).await?;
            out.show(&d, print_vm)
        }
    }
}

fn print_vm(d: &VmDetail) {
    println!(
        "VM {} (resource group {}): {}",
        safe(&d.name),
        safe(&d.resource_group),
        safe(&or_dash(
            (!d.addresses.is_empty()).then(|| d.addresses.join(", "))
        ))
    );
    match &d.effective_policy {
        Some(p) => print_policy(p),
        None => println!("no JIT policy (neither its own nor its group's)"),
    }
    match &d.agent {
        Some(a) => print_agent(a),
        None => println!("no agent was ever enrolled"),
    }
}

fn print_agent(a: &VmAgent) {
    println!("{}", safe(&agent_line(a)));
    for p in &a.problems {
        println!("  {}", safe(p));
    }
    if a.hooks.is_empty() {
        println!("  no hook report (none yet, or an agent below protocol level 7)");
        return;
    }
    HOOKS.print_header();
    for h in &a.hooks {
        HOOKS.print_row(&hook_cells(h));
    }
}

/// The agent in one line: id, state, when it was last heard from, its protocol level.
fn agent_line(a: &VmAgent) -> String {
    let version = a
        .version
        .as_deref()
        .map(|v| format!(", version {v}"))
        .unwrap_or_default();
    format!(
        "agent {}: {}, last heard {}, protocol level {}{version}",
        a.agent_id,
        a.connection,
        or_dash(a.last_seen_time_utc.as_deref()),
        a.protocol
    )
}

/// One interface's row: where jitgate runs, what runs before it, what is wrong.
fn hook_cells(h: &InterfaceHook) -> [String; 5] {
    let ahead = if h.ahead.is_empty() {
        "-".to_string()
    } else {
        h.ahead_words()
    };
    let problem = match (&h.problem, &h.problem_reason) {
        (None, _) => "-".to_string(),
        (Some(p), None) => p.to_string(),
        (Some(p), Some(why)) => format!("{p}: {why}"),
    };
    [
        h.interface.clone(),
        format!("{} ({})", h.hook, h.mode),
        format!("{} of {}", h.position, h.programs),
        ahead,
        problem,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api::{AgentConnection, AgentStatus, HookKind, HookMode, HookProblem};
    use jitgate_api::{ProgramAhead, VmAgent};

    #[test]
    fn a_row_says_where_what_is_ahead_and_what_is_wrong() {
        let mut h = InterfaceHook {
            interface: "eth0".into(),
            hook: HookKind::TcxIngress,
            mode: HookMode::Tcx,
            position: 1,
            programs: 2,
            ahead: vec![ProgramAhead {
                id: 40,
                name: "xdp_pass".into(),
                hook: HookKind::Xdp,
            }],
            problem: Some(HookProblem::NotFirst),
            problem_reason: None,
        };
        assert_eq!(
            hook_cells(&h),
            [
                "eth0",
                "tcx-ingress (tcx)",
                "1 of 2",
                "xdp_pass (id 40, xdp)",
                "NotFirst"
            ]
        );
        h.ahead.clear();
        h.problem = Some(HookProblem::Missing);
        h.problem_reason = Some("slot removed".into());
        let cells = hook_cells(&h);
        assert_eq!(cells[3], "-");
        assert_eq!(cells[4], "Missing: slot removed");
        h.problem = None;
        h.problem_reason = None;
        assert_eq!(hook_cells(&h)[4], "-");
    }

    #[test]
    fn the_agent_line_names_state_last_heard_and_level() {
        let a = VmAgent {
            agent_id: "a1".into(),
            status: AgentStatus::Active,
            connection: AgentConnection::Degraded,
            problems: vec![],
            enrolled_time_utc: "2026-12-01T09:00:00.000Z".into(),
            last_seen_time_utc: Some("2026-12-01T10:00:00.000Z".into()),
            last_report_time_utc: None,
            protocol: 7,
            version: Some("0.9.0".into()),
            hooks: vec![],
        };
        assert_eq!(
            agent_line(&a),
            "agent a1: degraded, last heard 2026-12-01T10:00:00.000Z, protocol level 7, \
             version 0.9.0"
        );
        let never = VmAgent {
            last_seen_time_utc: None,
            version: None,
            ..a
        };
        assert_eq!(
            agent_line(&never),
            "agent a1: degraded, last heard -, protocol level 7"
        );
    }
}
