//! `jit compliance`: the report, evaluations and probes on demand, history, policy
//! assignments and remediation (docs/compliance.md).

use clap::{Args, Subcommand, ValueEnum};
use jitgate_api::{
    AssignBody, Assignment, ComplianceHistoryQuery, ComplianceReport, ComplianceResult,
    ComplianceState, Format, RemediateBody, ReportQuery, ScanBody, ScanSummary, Scope,
};

use crate::client::Client;
use crate::exit::{Fail, R};
use crate::output::{ExportKind, Out, print_export};
use crate::table::{Table, col, num, or_dash};
use crate::text::safe;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ComplianceArgs {
    #[command(subcommand)]
    cmd: Option<ComplianceCmd>,
    #[command(flatten)]
    report: ReportArgs,
}

#[derive(Args)]
struct ReportArgs {
    /// Only this scope: `*`, `rg:GROUP` or `vm:NAME`.
    #[arg(long)]
    scope: Option<String>,
    /// Group the non-compliant resources (one remediation request per group).
    #[arg(long, value_enum)]
    group_by: Option<GroupBy>,
    /// The state as of this time (RFC 3339): the newest evaluation at or before it.
    #[arg(long)]
    at: Option<String>,
    /// One CSV row per finding.
    #[arg(long)]
    csv: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum GroupBy {
    ResourceGroup,
    Owner,
}

impl From<GroupBy> for jitgate_api::GroupBy {
    fn from(g: GroupBy) -> Self {
        match g {
            GroupBy::ResourceGroup => jitgate_api::GroupBy::ResourceGroup,
            GroupBy::Owner => jitgate_api::GroupBy::Owner,
        }
    }
}

#[derive(Subcommand)]
enum ComplianceCmd {
    /// Evaluate now (from agent reports and the last probe's findings).
    Scan {
        /// Probe the network first (TCP connects from the controller).
        #[arg(long)]
        probe: bool,
    },
    /// Probe now, then evaluate: registered addresses and the configured ranges (or --range,
    /// which must lie inside one), finding ports reachable without JIT and unmanaged hosts.
    Probe {
        #[arg(long)]
        range: Option<String>,
    },
    /// Compliance percentage over time, one line per evaluation, counted within your
    /// token's scope (and --scope).
    History {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Count only this part: `*`, `rg:GROUP` or `vm:NAME`.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Assign the compliance policy to a resource group or the whole fleet (audited).
    Assign {
        #[arg(long, conflicts_with = "fleet", required_unless_present = "fleet")]
        resource_group: Option<String>,
        /// The whole fleet.
        #[arg(long)]
        fleet: bool,
    },
    /// List policy assignments.
    Assignments,
    /// Remove a policy assignment by id (audited).
    Unassign { id: String },
    /// Enable JIT on a non-compliant VM from a named policy template (audited).
    Remediate {
        vm: String,
        #[arg(long, default_value = "default")]
        template: String,
    },
}

const HISTORY: Table = Table::new(&[
    col("SCAN", 6),
    col("TIME (UTC)", 24),
    col("REASON", 10),
    col("PROBE", 6),
    num("COMPLIANT", 9),
    num("NON-COMPLIANT", 13),
    num("UNKNOWN", 7),
    num("UNMANAGED", 9),
    col("COMPLIANCE", 0),
]);

const ASSIGNMENTS: Table = Table::new(&[
    col("ID", 38),
    col("SCOPE", 20),
    col("EFFECT", 7),
    col("CREATED", 24),
    col("BY", 0),
]);

const FINDINGS: Table = Table::new(&[
    col("FINDING", 22),
    col("PORT", 9),
    col("INTERFACE", 8),
    col("REASON", 0),
])
.indent("    ");

pub async fn run(c: &Client, a: &ComplianceArgs, out: Out) -> R<()> {
    match &a.cmd {
        None => report(c, &a.report, out).await,
        Some(ComplianceCmd::Scan { probe }) => {
            let body = ScanBody {
                probe: *probe,
                range: None,
            };
            out.show(&c.scan(&body).await?, print_summary)
        }
        Some(ComplianceCmd::Probe { range }) => {
            let body = ScanBody {
                probe: true,
                range: range.clone(),
            };
            out.show(&c.scan(&body).await?, print_summary)
        }
        Some(ComplianceCmd::History { limit, scope }) => {
            let q = ComplianceHistoryQuery {
                limit: Some(i64::from(*limit)),
                scope: scope.clone(),
            };
            let h = c.compliance_history(&q).await?;
            out.show_list(&h, |list: &[ScanSummary]| {
                HISTORY.print_header();
                for x in list {
                    HISTORY.print_row(&[
                        x.scan_id.to_string(),
                        x.time_utc.clone(),
                        x.reason.to_string(),
                        (if x.probed { "yes" } else { "no" }).into(),
                        x.compliant.to_string(),
                        x.non_compliant.to_string(),
                        x.unknown.to_string(),
                        x.unmanaged.to_string(),
                        pct(x.compliance_percentage),
                    ]);
                }
            })
        }
        Some(ComplianceCmd::Assign {
            resource_group,
            fleet,
        }) => {
            let scope = match (resource_group, fleet) {
                (Some(g), false) => Scope::ResourceGroup(g.clone()),
                (None, true) => Scope::All,
                _ => return Err(Fail::usage("give --resource-group RG or --fleet")),
            };
            let body = AssignBody {
                scope: scope.to_string(),
            };
            out.show(&c.assign(&body).await?, |x: &Assignment| {
                println!(
                    "assigned {} at {} ({})",
                    safe(&x.policy),
                    safe(&x.scope.to_string()),
                    safe(&x.id)
                );
            })
        }
        Some(ComplianceCmd::Assignments) => {
            let list = c.assignments().await?;
            out.show_list(&list, |list: &[Assignment]| {
                ASSIGNMENTS.print_header();
                for x in list {
                    ASSIGNMENTS.print_row(&[
                        x.id.clone(),
                        x.scope.to_string(),
                        x.effect.to_string(),
                        x.created_time_utc.clone(),
                        x.created_by.clone(),
                    ]);
                }
            })
        }
        Some(ComplianceCmd::Unassign { id }) => {
            c.unassign(id).await?;
            if !out.json {
                println!("removed assignment {}", safe(id));
            }
            Ok(())
        }
        Some(ComplianceCmd::Remediate { vm, template }) => {
            let body = RemediateBody {
                virtual_machine: vm.clone(),
                template: template.clone(),
            };
            out.show(&c.remediate(&body).await?, |_| {
                println!(
                    "JIT enabled on {} from template {}; the next evaluation shows the result",
                    safe(vm),
                    safe(template)
                );
            })
        }
    }
}

fn pct(p: Option<f64>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{p:.1} %"))
}

fn print_summary(v: &ScanSummary) {
    println!(
        "evaluation {} at {}{}: {} compliant, {} non-compliant, {} unknown, {} unmanaged hosts ({})",
        v.scan_id,
        safe(&v.time_utc),
        if v.probed { " (probed)" } else { "" },
        v.compliant,
        v.non_compliant,
        v.unknown,
        v.unmanaged,
        pct(v.compliance_percentage)
    );
}

async fn report(c: &Client, a: &ReportArgs, out: Out) -> R<()> {
    let mut q = ReportQuery {
        scope: a.scope.clone(),
        group_by: a.group_by.map(Into::into),
        at: a.at.clone(),
        format: None,
    };
    if a.csv {
        q.format = Some(Format::Csv);
        return print_export(&c.compliance_text(&q).await?, ExportKind::Csv);
    }
    let r = c.compliance(&q).await?;
    out.show(&r, print_report)
}

fn print_report(v: &ComplianceReport) {
    let Some(scan) = &v.scan else {
        println!(
            "no evaluation yet: assign the policy (jit compliance assign) and run jit compliance scan"
        );
        return;
    };
    println!(
        "as of {} (evaluation {}): {} compliant, {} non-compliant, {} unknown, {} unmanaged hosts ({})",
        safe(&scan.time_utc),
        scan.scan_id,
        v.compliant,
        v.non_compliant,
        v.unknown,
        v.unmanaged,
        pct(v.compliance_percentage)
    );
    match &v.groups {
        Some(groups) => {
            for g in groups {
                println!("{} ({}):", safe(&g.key), safe(&g.owner));
                g.non_compliant.iter().for_each(print_result);
            }
        }
        None => v
            .results
            .iter()
            .filter(|r| r.state != ComplianceState::Compliant)
            .for_each(print_result),
    }
}

fn print_result(r: &ComplianceResult) {
    println!(
        "  {} {} ({}, owner {})",
        safe(r.state.as_str()),
        safe(&r.resource),
        safe(&r.resource_group),
        safe(&r.owner)
    );
    for f in &r.findings {
        FINDINGS.print_row(&[
            f.code.to_string(),
            or_dash(f.port.as_deref()),
            or_dash(f.interface.as_deref()),
            f.reason.clone(),
        ]);
    }
}
