//! `jit compliance`: the report, evaluations and probes on demand, history, policy
//! assignments and remediation (docs/compliance.md).

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::{Client, Fail, R, print_json, s, urlencode};

/// How long `scan` and `probe` wait for the controller's answer.
const SCAN_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

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
    /// Compliance percentage over time, one line per evaluation.
    History {
        #[arg(long, default_value_t = 100)]
        limit: u32,
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

pub async fn run(c: &Client, a: &ComplianceArgs, json: bool) -> R<()> {
    let post = |path: &'static str, body: Value| async move {
        c.call(reqwest::Method::POST, path, Some(&body)).await
    };
    // An evaluation with a probe may take minutes (the controller bounds it by
    // probe_max_seconds); wait for it rather than giving up after the usual 30 s.
    let scan = |body: Value| async move {
        c.call_within(
            reqwest::Method::POST,
            "/compliance/scans",
            Some(&body),
            Some(SCAN_WAIT),
        )
        .await
    };
    match &a.cmd {
        None => return report(c, &a.report, json).await,
        Some(ComplianceCmd::Scan { probe }) => {
            let v = scan(json!({"probe": probe})).await?;
            print_summary(&v, json);
        }
        Some(ComplianceCmd::Probe { range }) => {
            let mut b = json!({"probe": true});
            if let Some(r) = range {
                b["range"] = json!(r);
            }
            let v = scan(b).await?;
            print_summary(&v, json);
        }
        Some(ComplianceCmd::History { limit }) => {
            let v = c.get(&format!("/compliance/history?limit={limit}")).await?;
            if json {
                print_json(&v["value"]);
            } else {
                println!(
                    "{:<6} {:<24} {:<10} {:<6} {:>9} {:>13} {:>7} {:>9}  COMPLIANCE",
                    "SCAN",
                    "TIME (UTC)",
                    "REASON",
                    "PROBE",
                    "COMPLIANT",
                    "NON-COMPLIANT",
                    "UNKNOWN",
                    "UNMANAGED"
                );
                for x in v["value"].as_array().into_iter().flatten() {
                    println!(
                        "{:<6} {:<24} {:<10} {:<6} {:>9} {:>13} {:>7} {:>9}  {}",
                        s(&x["scanId"]),
                        s(&x["timeUtc"]),
                        s(&x["reason"]),
                        if x["probed"] == true { "yes" } else { "no" },
                        s(&x["compliant"]),
                        s(&x["nonCompliant"]),
                        s(&x["unknown"]),
                        s(&x["unmanaged"]),
                        pct(&x["compliancePercentage"])
                    );
                }
            }
        }
        Some(ComplianceCmd::Assign {
            resource_group,
            fleet,
        }) => {
            let scope = match (resource_group, fleet) {
                (Some(g), false) => format!("rg:{g}"),
                (None, true) => "*".into(),
                _ => return Err(Fail::usage("give --resource-group RG or --fleet")),
            };
            let v = post("/compliance/assignments", json!({"scope": scope})).await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "assigned {} at {} ({})",
                    s(&v["policy"]),
                    s(&v["scope"]),
                    s(&v["id"])
                );
            }
        }
        Some(ComplianceCmd::Assignments) => {
            let v = c.get("/compliance/assignments").await?;
            if json {
                print_json(&v["value"]);
            } else {
                println!(
                    "{:<38} {:<20} {:<7} {:<24} BY",
                    "ID", "SCOPE", "EFFECT", "CREATED"
                );
                for x in v["value"].as_array().into_iter().flatten() {
                    println!(
                        "{:<38} {:<20} {:<7} {:<24} {}",
                        s(&x["id"]),
                        s(&x["scope"]),
                        s(&x["effect"]),
                        s(&x["createdTimeUtc"]),
                        s(&x["createdBy"])
                    );
                }
            }
        }
        Some(ComplianceCmd::Unassign { id }) => {
            c.call(
                reqwest::Method::DELETE,
                &format!("/compliance/assignments/{}", urlencode(id)),
                None,
            )
            .await?;
            if !json {
                println!("removed assignment {id}");
            }
        }
        Some(ComplianceCmd::Remediate { vm, template }) => {
            let v = post(
                "/compliance/remediate",
                json!({"virtualMachine": vm, "template": template}),
            )
            .await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "JIT enabled on {vm} from template {template}; the next evaluation shows the result"
                );
            }
        }
    }
    Ok(())
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|p| format!("{p:.1} %"))
        .unwrap_or_else(|| "-".into())
}

fn print_summary(v: &Value, json: bool) {
    if json {
        print_json(v);
        return;
    }
    println!(
        "evaluation {} at {}{}: {} compliant, {} non-compliant, {} unknown, {} unmanaged hosts ({})",
        s(&v["scanId"]),
        s(&v["timeUtc"]),
        if v["probed"] == true { " (probed)" } else { "" },
        s(&v["compliant"]),
        s(&v["nonCompliant"]),
        s(&v["unknown"]),
        s(&v["unmanaged"]),
        pct(&v["compliancePercentage"])
    );
}

async fn report(c: &Client, a: &ReportArgs, json: bool) -> R<()> {
    let mut q = Vec::new();
    if let Some(sc) = &a.scope {
        q.push(format!("scope={}", urlencode(sc)));
    }
    if let Some(at) = &a.at {
        q.push(format!("at={}", urlencode(at)));
    }
    if let Some(g) = a.group_by {
        q.push(format!(
            "groupBy={}",
            match g {
                GroupBy::ResourceGroup => "resourceGroup",
                GroupBy::Owner => "owner",
            }
        ));
    }
    if a.csv {
        q.push("format=csv".into());
        let text = c.get_text(&format!("/compliance?{}", q.join("&"))).await?;
        print!("{text}");
        return Ok(());
    }
    let v = c.get(&format!("/compliance?{}", q.join("&"))).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    if v["scan"].is_null() {
        println!(
            "no evaluation yet: assign the policy (jit compliance assign) and run jit compliance scan"
        );
        return Ok(());
    }
    println!(
        "as of {} (evaluation {}): {} compliant, {} non-compliant, {} unknown, {} unmanaged hosts ({})",
        s(&v["scan"]["timeUtc"]),
        s(&v["scan"]["scanId"]),
        s(&v["compliant"]),
        s(&v["nonCompliant"]),
        s(&v["unknown"]),
        s(&v["unmanaged"]),
        pct(&v["compliancePercentage"])
    );
    let print_one = |r: &Value| {
        println!(
            "  {} {} ({}, owner {})",
            s(&r["state"]),
            s(&r["resource"]),
            s(&r["resourceGroup"]),
            s(&r["owner"])
        );
        for f in r["findings"].as_array().into_iter().flatten() {
            println!(
                "    {:<22} {:<9} {:<8} {}",
                s(&f["code"]),
                s(&f["port"]),
                s(&f["interface"]),
                s(&f["reason"])
            );
        }
    };
    if let Some(groups) = v["groups"].as_array() {
        for g in groups {
            println!("{} ({}):", s(&g["key"]), s(&g["owner"]));
            for r in g["nonCompliant"].as_array().into_iter().flatten() {
                print_one(r);
            }
        }
    } else {
        for r in v["results"].as_array().into_iter().flatten() {
            if r["state"] != "Compliant" {
                print_one(r);
            }
        }
    }
    Ok(())
}
