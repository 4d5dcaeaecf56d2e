//! `jit policy show|set|delete`: a VM's (effective) JIT policy, or a resource group's.

use std::path::{Path, PathBuf};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use jitgate_api::{
    ApprovalRule, ApprovalStage, Approver, MaxConnections, OnExpiry, PolicyBody, PolicyPort,
    PolicyView, ProtoSel,
};
use serde::Deserialize;

use crate::client::{Client, PolicyOf};
use crate::exit::{self, Fail, R};
use crate::input;
use crate::output::{Out, print_json};
use crate::table::{Table, col, or_dash};
use crate::text::safe;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Show a VM's effective policy (or a resource group's policy).
    Show(PolicyTarget),
    /// Set (replace) a policy from flags or a JSON file.
    Set(Box<PolicySet>),
    /// Delete a policy (a VM then falls back to its resource group's).
    Delete(PolicyTarget),
}

#[derive(Args)]
pub struct PolicyTarget {
    /// The VM (omit with --resource-group).
    vm: Option<String>,
    /// Target the resource group's policy instead of a VM's.
    #[arg(long)]
    resource_group: Option<String>,
}

#[derive(Args)]
pub struct PolicySet {
    #[command(flatten)]
    target: PolicyTarget,
    /// A JSON file {"ports": [...]} in the API's format ("-" for stdin).
    #[arg(long, conflicts_with_all = ["port", "source", "max", "on_expiry", "max_connections",
                                      "approvers", "stage"])]
    file: Option<PathBuf>,
    /// Port and protocol: 22, 22/tcp, 3389/udp, 3389/* (repeatable; default protocol tcp).
    #[arg(long)]
    port: Vec<String>,
    /// Allowed source prefixes for these ports (repeatable), IPv4 or IPv6 CIDR, or "*".
    #[arg(long)]
    source: Vec<String>,
    /// Maximum request window: 3h, 90m, PT3H (PT5M..PT24H).
    #[arg(long, default_value = "3h")]
    max: String,
    /// What happens to admitted flows at expiry: keep or cut.
    #[arg(long, default_value = "keep",
          value_parser = PossibleValuesParser::new(["keep", "cut"])
              .try_map(|s| s.parse::<OnExpiry>()))]
    on_expiry: OnExpiry,
    /// Each grant admits at most N new connections (1..=65535); requests may ask for fewer.
    /// Without it: unlimited.
    #[arg(long, value_name = "N")]
    max_connections: Option<MaxConnections>,
    #[command(flatten)]
    approval: ApprovalFlags,
}

/// Who must approve requests for these ports (absent: approved by policy alone).
#[derive(Args)]
pub struct ApprovalFlags {
    /// Approvers of a one-stage rule, comma-separated: token:NAME, oidc:ISSUER#SUBJECT,
    /// group:NAME. For several stages use --stage instead.
    #[arg(long, value_delimiter = ',', conflicts_with = "stage")]
    approvers: Vec<String>,
    /// How many distinct approvers of --approvers must approve (default 1).
    #[arg(long, requires = "approvers")]
    approvals_required: Option<u32>,
    /// One stage, in order (repeatable): APPROVER[,APPROVER...][=REQUIRED], e.g.
    /// --stage token:alice,group:sec-leads=2 --stage group:ops-managers.
    #[arg(long)]
    stage: Vec<String>,
    /// Requests whose window is at most this are approved by policy (30m, 1h, PT1H).
    #[arg(long)]
    auto_approve_up_to: Option<String>,
    /// How long a request may wait for approval (default 1h, at most 7d).
    #[arg(long)]
    approval_timeout: Option<String>,
    /// The requester's own approval counts (named approvers only).
    #[arg(long)]
    allow_self_approval: bool,
    /// An admin may record an emergency approval (with a reason) that completes a request.
    #[arg(long)]
    allow_emergency: bool,
}

impl ApprovalFlags {
    /// The rule the flags describe; None when no approver is named.
    fn rule(&self) -> R<Option<ApprovalRule>> {
        let mut stages = Vec::new();
        if !self.approvers.is_empty() {
            stages.push(ApprovalStage {
                approvers: self
                    .approvers
                    .iter()
                    .map(|a| approver(a))
                    .collect::<R<_>>()?,
                required: self.approvals_required.unwrap_or(1),
            });
        }
        for st in &self.stage {
            let (list, required) = match st.rsplit_once('=') {
                Some((l, n)) => (
                    l,
                    n.trim().parse::<u32>().map_err(|_| {
                        Fail::usage(format!("--stage {st:?}: REQUIRED must be a number"))
                    })?,
                ),
                None => (st.as_str(), 1),
            };
            stages.push(ApprovalStage {
                approvers: list
                    .split(',')
                    .map(|a| approver(a.trim()))
                    .collect::<R<_>>()?,
                required,
            });
        }
        let rest = self.auto_approve_up_to.is_some()
            || self.approval_timeout.is_some()
            || self.allow_self_approval
            || self.allow_emergency;
        if stages.is_empty() {
            if rest {
                return Err(Fail::usage(
                    "approval options need approvers: give --approvers or --stage",
                ));
            }
            return Ok(None);
        }
        Ok(Some(ApprovalRule {
            auto_approve_up_to: self
                .auto_approve_up_to
                .as_deref()
                .map(input::iso_duration)
                .transpose()?,
            stages,
            allow_self_approval: self.allow_self_approval,
            allow_emergency: self.allow_emergency,
            timeout: self
                .approval_timeout
                .as_deref()
                .map(input::iso_duration)
                .transpose()?,
        }))
    }
}

/// An approver as typed, checked by the parser the controller uses.
fn approver(s: &str) -> R<String> {
    s.parse::<Approver>()
        .map(|a| a.to_string())
        .map_err(|e| Fail::usage(e.to_string()))
}

impl PolicyTarget {
    fn of(&self) -> R<PolicyOf<'_>> {
        match (&self.vm, &self.resource_group) {
            (Some(vm), None) => Ok(PolicyOf::Vm(vm)),
            (None, Some(rg)) => Ok(PolicyOf::ResourceGroup(rg)),
            _ => Err(Fail::usage(
                "name a VM or --resource-group RG (one of them)",
            )),
        }
    }
}

pub async fn run(c: &Client, cmd: &PolicyCmd, out: Out) -> R<()> {
    match cmd {
        PolicyCmd::Show(t) => show(c, t, out).await,
        PolicyCmd::Set(ps) => {
            let body = match &ps.file {
                Some(f) => from_file(f)?,
                None => from_flags(ps)?,
            };
            let v = c.put_policy(&ps.target.of()?, &body).await?;
            out.show(&v, print_policy)
        }
        PolicyCmd::Delete(t) => {
            c.delete_policy(&t.of()?).await?;
            if out.json {
                print_json(&serde_json::json!({"deleted": true}));
            } else {
                println!("deleted");
            }
            Ok(())
        }
    }
}

/// A VM's effective policy comes with the VM (its own, or its group's); a group's, from
/// the group.
async fn show(c: &Client, t: &PolicyTarget, out: Out) -> R<()> {
    let (Some(vm), None) = (&t.vm, &t.resource_group) else {
        let v = c.policy(&t.of()?).await?;
        return out.show(&v, print_policy);
    };
    let d = c.vm(vm).await?;
    let Some(policy) = &d.effective_policy else {
        return Err(Fail::new(
            exit::NOT_FOUND,
            format!("VM {vm} has no JIT policy (neither its own nor its group's)"),
        ));
    };
    if out.json {
        /// The policy as received, with every field a newer controller may add.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            effective_policy: serde_json::Value,
        }
        let raw: Raw = serde_json::from_str(d.text())
            .map_err(|e| Fail::error(format!("the controller's answer: {e}")))?;
        print_json(&raw.effective_policy);
    } else {
        print_policy(policy);
    }
    Ok(())
}

fn from_file(f: &Path) -> R<PolicyBody> {
    let text = if f.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Fail::usage(format!("stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(f).map_err(|e| Fail::usage(format!("{}: {e}", f.display())))?
    };
    serde_json::from_str(&text).map_err(|e| Fail::usage(format!("{}: {e}", f.display())))
}

fn from_flags(ps: &PolicySet) -> R<PolicyBody> {
    if ps.port.is_empty() || ps.source.is_empty() {
        return Err(Fail::usage(
            "give --port and --source (repeatable), or --file policy.json",
        ));
    }
    for s in &ps.source {
        input::source(s)?;
    }
    let max = input::iso_duration(&ps.max)?;
    let approval = ps.approval.rule()?;
    let ports = ps
        .port
        .iter()
        .map(|p| {
            let spec = input::port_spec(p)?;
            Ok(PolicyPort {
                number: u32::from(spec.port.get()),
                protocol: spec.protocol.unwrap_or(ProtoSel::Tcp).as_str().into(),
                allowed_source_address_prefix: None,
                allowed_source_address_prefixes: Some(ps.source.clone()),
                max_request_access_duration: max.clone(),
                on_expiry: ps.on_expiry,
                max_connections: ps.max_connections,
                approval: approval.clone(),
            })
        })
        .collect::<R<Vec<_>>>()?;
    Ok(PolicyBody { ports })
}

const PORTS: Table = Table::new(&[
    col("PORT", 8),
    col("PROTO", 8),
    col("MAX", 10),
    col("EXPIRY", 8),
    col("CONNS", 6),
    col("SOURCES", 28),
    col("APPROVAL", 0),
]);

pub fn print_policy(v: &PolicyView) {
    println!(
        "{} policy of {} (updated {} by {})",
        v.scope,
        safe(&v.name),
        safe(&v.updated_time_utc),
        safe(&v.updated_by)
    );
    PORTS.print_header();
    for p in &v.ports {
        PORTS.print_row(&[
            p.number.to_string(),
            p.protocol.clone(),
            p.max_request_access_duration.clone(),
            p.on_expiry.to_string(),
            or_dash(p.max_connections.as_ref()),
            prefixes(
                p.allowed_source_address_prefix.as_deref(),
                p.allowed_source_address_prefixes.as_deref(),
            ),
            p.approval
                .as_ref()
                .map_or_else(|| "-".to_string(), describe),
        ]);
    }
}

/// An approval rule in one line: its stages, then its options.
fn describe(r: &ApprovalRule) -> String {
    let mut parts: Vec<String> = r
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}: {} of {}", i + 1, s.required, s.approvers.join(",")))
        .collect();
    if let Some(a) = &r.auto_approve_up_to {
        parts.push(format!("auto up to {a}"));
    }
    if let Some(t) = &r.timeout {
        parts.push(format!("timeout {t}"));
    }
    if r.allow_self_approval {
        parts.push("self-approval".into());
    }
    if r.allow_emergency {
        parts.push("emergency".into());
    }
    parts.join("; ")
}

/// A port's sources as one cell: the single prefix, or the list comma-separated.
pub fn prefixes(one: Option<&str>, many: Option<&[String]>) -> String {
    match (one, many) {
        (Some(p), _) => p.to_string(),
        (None, Some(list)) => list.join(","),
        (None, None) => "-".into(),
    }
}
