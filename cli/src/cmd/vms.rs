//! `jit vms`, `jit agents`: the VMs the caller can see, and their agents.

use jitgate_api::{Agent, InterfaceHook, Vm};

use crate::client::Client;
use crate::exit::R;
use crate::output::Out;
use crate::table::{Table, col, list, num, or_dash};
use crate::text::safe;

const VMS: Table = Table::new(&[
    col("NAME", 24),
    col("RESOURCE GROUP", 20),
    col("POLICY", 16),
    col("AGENT", 9),
    col("ADDRESSES", 0),
]);

const AGENTS: Table = Table::new(&[
    col("VM", 16),
    col("AGENT", 36),
    col("STATE", 8),
    col("LAST SEEN", 25),
    col("INTERFACES", 20),
    col("PROTECTED", 24),
    num("GRANTS", 6),
    col("AUDIT", 0),
]);

pub async fn vms(c: &Client, out: Out) -> R<()> {
    let vms = c.vms().await?;
    out.show_list(&vms, |vms: &[Vm]| {
        VMS.print_header();
        for v in vms {
            VMS.print_row(&[
                v.name.clone(),
                v.resource_group.clone(),
                or_dash(v.policy_source.as_ref()),
                v.status.to_string(),
                v.addresses.join(" "),
            ]);
            for p in &v.problems {
                println!("    {}", safe(p));
            }
        }
    })
}

pub async fn agents(c: &Client, out: Out) -> R<()> {
    let agents = c.agents().await?;
    out.show_list(&agents, |agents: &[Agent]| {
        AGENTS.print_header();
        for a in agents {
            let head = or_dash(a.audit_head.as_deref());
            AGENTS.print_row(&[
                a.virtual_machine.clone(),
                a.agent_id.clone(),
                a.connection.to_string(),
                or_dash(a.last_seen_time_utc.as_deref()),
                list(&a.interfaces),
                list(&a.protected_ports),
                or_dash(a.active_grants),
                format!(
                    "{} {}",
                    or_dash(a.audit_seq),
                    head.get(..12).unwrap_or(&head)
                ),
            ]);
            for h in &a.hooks {
                println!("    {}", safe(&hook_line(h)));
            }
        }
    })
}

/// One interface's hook under its agent: where jitgate runs there, and what is wrong.
fn hook_line(h: &InterfaceHook) -> String {
    let place = format!(
        "{}: {} ({}), position {} of {}",
        h.interface, h.hook, h.mode, h.position, h.programs
    );
    match h.problem_words() {
        Some(p) => format!("{place}; PROBLEM: {p}"),
        None => format!("{place}; runs first"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api::{HookKind, HookMode, HookProblem, ProgramAhead};

    #[test]
    fn a_hook_line_says_where_and_what_is_ahead() {
        let mut h = InterfaceHook {
            interface: "eth0".into(),
            hook: HookKind::TcxIngress,
            mode: HookMode::Tcx,
            position: 0,
            programs: 1,
            ahead: vec![],
            problem: None,
            problem_reason: None,
        };
        assert_eq!(
            hook_line(&h),
            "eth0: tcx-ingress (tcx), position 0 of 1; runs first"
        );
        h.ahead.push(ProgramAhead {
            id: 7,
            name: "xdp_pass".into(),
            hook: HookKind::Xdp,
        });
        h.problem = Some(HookProblem::NotFirst);
        let line = hook_line(&h);
        assert!(
            line.contains("PROBLEM: another program runs ahead of jitgate on eth0"),
            "{line}"
        );
        assert!(line.contains("xdp_pass (id 7, xdp)"), "{line}");
    }
}
