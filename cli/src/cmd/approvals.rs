//! `jit approvals`, `jit approve`, `jit deny`, `jit cancel`: the requests waiting for your
//! decision, the approvals report, and decisions on a pending request.

use clap::Args;
use jitgate_api::{ApprovalsQuery, DecisionBody, Format, RequestView};

use crate::client::Client;
use crate::cmd::requests::{print_approvals, print_pending, print_requests};
use crate::exit::R;
use crate::output::Out;
use crate::table::{Table, col, or_dash};

#[derive(Args)]
pub struct ApprovalsArgs {
    /// The approvals report instead: every decision (who, when, stage, reason, emergency).
    #[arg(long)]
    history: bool,
    /// Report: only requests touching this VM.
    #[arg(long, requires = "history")]
    vm: Option<String>,
    /// Report: only requests touching this resource group.
    #[arg(long, requires = "history")]
    resource_group: Option<String>,
    /// Report: only decisions by this principal (token:NAME, oidc:ISSUER#SUBJECT).
    #[arg(long, requires = "history")]
    approver: Option<String>,
    /// Report: decisions at or after this time (RFC 3339).
    #[arg(long, requires = "history")]
    since: Option<String>,
    /// Report: decisions at or before this time (RFC 3339).
    #[arg(long, requires = "history")]
    until: Option<String>,
    /// Report: at most this many rows (default 1000).
    #[arg(long, requires = "history")]
    limit: Option<i64>,
    /// Report: print CSV (formula-safe, for spreadsheets).
    #[arg(long, requires = "history", conflicts_with = "json")]
    csv: bool,
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The request id.
    request: String,
    /// Why (recorded on the request and in the activity log); required with --emergency.
    #[arg(long)]
    reason: Option<String>,
    /// An admin's emergency approval: completes the request at once, where every rule of
    /// the request allows it; flagged everywhere it is shown.
    #[arg(long)]
    emergency: bool,
}

#[derive(Args)]
pub struct DenyArgs {
    /// The request id.
    request: String,
    /// Why (required; the requester sees it).
    #[arg(long)]
    reason: String,
}

pub async fn list(c: &Client, a: &ApprovalsArgs, out: Out) -> R<()> {
    if !a.history {
        let v = c.approvals(&ApprovalsQuery::default()).await?;
        return out.show_list(&v, print_waiting);
    }
    let q = ApprovalsQuery {
        history: Some(true),
        vm: a.vm.clone(),
        resource_group: a.resource_group.clone(),
        approver: a.approver.clone(),
        since: a.since.clone(),
        until: a.until.clone(),
        limit: a.limit,
        format: a.csv.then_some(Format::Csv),
    };
    if a.csv {
        // The controller writes the CSV (formula-safe); printed as received.
        print!("{}", c.approvals_text(&q).await?);
        return Ok(());
    }
    let v = c.approval_history(&q).await?;
    out.show_list(&v, |l| {
        HISTORY.print_header();
        for e in l {
            HISTORY.print_row(&[
                e.time_utc.clone(),
                e.request_id.clone(),
                e.requestor.clone(),
                e.virtual_machines.join(","),
                or_dash(e.stage.map(|s| s.to_string())),
                e.approver.clone(),
                if e.emergency {
                    format!("{} (EMERGENCY)", e.decision)
                } else {
                    e.decision.to_string()
                },
                or_dash(e.reason.clone()),
            ]);
        }
    })
}

pub async fn approve(c: &Client, a: &ApproveArgs, out: Out) -> R<()> {
    let body = DecisionBody {
        reason: a.reason.clone(),
        emergency: a.emergency,
    };
    let r = c.decide(&a.request, "approve", &body).await?;
    out.show(&r, print_decided)
}

pub async fn deny(c: &Client, a: &DenyArgs, out: Out) -> R<()> {
    let body = DecisionBody {
        reason: Some(a.reason.clone()),
        emergency: false,
    };
    let r = c.decide(&a.request, "deny", &body).await?;
    out.show(&r, print_decided)
}

pub async fn cancel(c: &Client, id: &str, out: Out) -> R<()> {
    let r = c.decide(id, "cancel", &DecisionBody::default()).await?;
    out.show(&r, print_decided)
}

const HISTORY: Table = Table::new(&[
    col("TIME (UTC)", 24),
    col("REQUEST", 36),
    col("REQUESTOR", 12),
    col("VMS", 12),
    col("STAGE", 5),
    col("APPROVER", 20),
    col("DECISION", 12),
    col("REASON", 0),
])
.gap("  ");

/// The requests waiting for the caller, with what each still needs.
fn print_waiting(v: &[RequestView]) {
    if v.is_empty() {
        println!("nothing waits for your decision");
        return;
    }
    print_requests(v);
    for r in v {
        print_pending(r);
    }
}

fn print_decided(r: &RequestView) {
    print_requests(std::slice::from_ref(r));
    print_approvals(r);
    print_pending(r);
}
