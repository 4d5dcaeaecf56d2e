//! `jit request`, `jit show`, `jit revoke`: ask for access (Azure's "initiate"), look at one
//! request, end it; and waiting until an agent has applied it.

use std::time::{Duration, Instant};

use clap::Args;
use jitgate_api::{
    InitiateBody, InitiatePort, InitiateVm, MaxConnections, PortStatus, RequestView, StatusReason,
};

use crate::client::{Client, Reply};
use crate::cmd::policy::prefixes;
use crate::exit::{self, Fail, R};
use crate::input;
use crate::output::Out;
use crate::table::{Table, col, or_dash};
use crate::text::safe;

#[derive(Args)]
pub struct RequestArgs {
    /// The VM.
    vm: String,
    /// Port[/protocol] (repeatable): 22, 22/tcp, 53/udp, 3389/*. Without a protocol the
    /// policy's protocol is used.
    #[arg(long, required = true)]
    port: Vec<String>,
    /// Source prefix (repeatable); default: your address as the controller sees it ("My IP").
    #[arg(long)]
    source: Vec<String>,
    /// How long: 30m, 1h, 2h30m or ISO 8601 (PT1H).
    #[arg(long, conflicts_with = "until", required_unless_present = "until")]
    duration: Option<String>,
    /// Until when: an ISO 8601 time such as 2026-01-31T17:00:00Z.
    #[arg(long)]
    until: Option<String>,
    /// Book the access ahead: it opens at this time (RFC 3339, or +2h / +30m from now; at
    /// most 7 days ahead). Without it the window starts when the request is approved.
    #[arg(long)]
    start: Option<String>,
    /// Admit at most N new connections per grant (1..=65535; at most the policy's). Without
    /// it the policy's limit applies (none: unlimited).
    #[arg(long, value_name = "N")]
    max_connections: Option<MaxConnections>,
    /// Why you need access (recorded in history and the activity log).
    #[arg(long, short = 'j')]
    justification: String,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Args, Clone)]
pub struct WaitArgs {
    /// Wait until the agent has applied the access (status Applied).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (30s, 2m, ...).
    #[arg(long, default_value = "2m")]
    timeout: String,
    /// How often to poll while waiting.
    #[arg(long, default_value = "1s")]
    poll: String,
}

pub async fn request(c: &Client, a: &RequestArgs, out: Out) -> R<()> {
    for s in &a.source {
        input::source(s)?;
    }
    let (duration, end_time_utc) = match (&a.duration, &a.until) {
        (Some(d), None) => (Some(input::iso_duration(d)?), None),
        (None, Some(u)) => (None, Some(u.clone())),
        _ => return Err(Fail::usage("give --duration or --until")),
    };
    let start_time_utc = a.start.as_deref().map(input::start_time).transpose()?;
    let wait = if a.wait.wait {
        Some(Wait::from_args(&a.wait.timeout, &a.wait.poll)?)
    } else {
        None
    };
    let ports = a
        .port
        .iter()
        .map(|p| {
            let spec = input::port_spec(p)?;
            Ok(InitiatePort {
                number: u32::from(spec.port.get()),
                protocol: spec.protocol.map(|p| p.as_str().to_string()),
                allowed_source_address_prefix: None,
                allowed_source_address_prefixes: (!a.source.is_empty()).then(|| a.source.clone()),
                end_time_utc: end_time_utc.clone(),
                duration: duration.clone(),
                start_time_utc: start_time_utc.clone(),
                max_connections: a.max_connections,
            })
        })
        .collect::<R<Vec<_>>>()?;
    let body = InitiateBody {
        virtual_machines: vec![InitiateVm {
            id: a.vm.clone(),
            ports,
        }],
        justification: a.justification.clone(),
    };
    let r = c.initiate(&body).await?;
    if r.status == PortStatus::Denied {
        out.show(&r, print_denial)?;
        return Err(Fail::new(exit::DENIED, format!("request {} denied", r.id)));
    }
    if r.status == PortStatus::PendingApproval && wait.is_none() {
        return out.show(&r, |r| {
            print_requests(std::slice::from_ref(r));
            print_pending(r);
        });
    }
    let r = match wait {
        Some(w) => w.applied(c, &r.id, out.json).await?,
        None => r,
    };
    out.show(&r, |r| print_requests(std::slice::from_ref(r)))
}

pub async fn show(c: &Client, id: &str, out: Out) -> R<()> {
    let r = c.request_view(id).await?;
    out.show(&r, |r| {
        print_requests(std::slice::from_ref(r));
        if r.status == PortStatus::Denied {
            print_denial(r);
        }
        if r.emergency {
            println!("  completed by an EMERGENCY approval");
        }
        print_approvals(r);
        print_pending(r);
    })
}

pub async fn revoke(c: &Client, id: &str, out: Out) -> R<()> {
    let r = c.revoke(id).await?;
    out.show(&r, |r| print_requests(std::slice::from_ref(r)))
}

/// The failure of a request that ended without access: exit 10 if it ended while pending
/// approval (rejected, timed out, cancelled), else 3 (denied by policy).
fn ended_without_access(r: &RequestView) -> Fail {
    let reason = r
        .virtual_machines
        .iter()
        .flat_map(|v| &v.ports)
        .find_map(|p| p.status_reason.clone());
    match reason {
        Some(
            why @ (StatusReason::Rejected
            | StatusReason::ApprovalTimedOut
            | StatusReason::Cancelled),
        ) => {
            let by = r
                .approvals
                .last()
                .and_then(|a| a.reason.as_deref())
                .map(|x| format!(": {x}"))
                .unwrap_or_default();
            Fail::new(exit::REJECTED, format!("request {} ended {why}{by}", r.id))
        }
        _ => Fail::new(exit::DENIED, format!("request {} was denied", r.id)),
    }
}

/// How long to wait for an agent, and how often to look.
pub struct Wait {
    timeout: Duration,
    poll: Duration,
}

impl Wait {
    pub fn from_args(timeout: &str, poll: &str) -> R<Wait> {
        let secs = |s: &str| input::seconds(s).map(|n| Duration::from_secs(n.unsigned_abs()));
        Ok(Wait {
            timeout: secs(timeout)?,
            poll: secs(poll)?.max(Duration::from_secs(1)),
        })
    }

    /// Polls a request until it is Applied (Ok), Denied or Revoked (Err), or the timeout
    /// passes (Err, the request stays). While it is pending approval, says (once per
    /// change) who still has to approve.
    pub async fn applied(&self, c: &Client, id: &str, quiet: bool) -> R<Reply<RequestView>> {
        let start = Instant::now();
        if !quiet {
            eprintln!("waiting for the agent to apply request {} ...", safe(id));
        }
        let mut told = None;
        loop {
            let r = c.request_view(id).await?;
            match r.status {
                PortStatus::Applied => return Ok(r),
                PortStatus::Denied => {
                    return Err(ended_without_access(&r));
                }
                PortStatus::PendingApproval => {
                    if !quiet && told.as_ref() != Some(&r.pending_approval) {
                        for p in &r.pending_approval {
                            eprintln!(
                                "request {} waits for approval, stage {}/{}: {} of {} from {}",
                                safe(id),
                                p.stage,
                                p.stages,
                                p.approved_by.len(),
                                p.required,
                                safe(&p.approvers.join(", "))
                            );
                        }
                        told = Some(r.pending_approval.clone());
                    }
                }
                PortStatus::Revoked => {
                    return Err(Fail::new(
                        exit::CONFLICT,
                        format!("request {id} was revoked before it was applied"),
                    ));
                }
                PortStatus::Initiated | PortStatus::Other(_) => {}
            }
            if start.elapsed() >= self.timeout {
                return Err(Fail::new(
                    exit::TIMEOUT,
                    format!(
                        "timed out after {}s waiting for request {id} to be applied (status {}); it stays requested",
                        self.timeout.as_secs(),
                        r.status
                    ),
                ));
            }
            tokio::time::sleep(
                self.poll
                    .min(self.timeout.saturating_sub(start.elapsed()))
                    .max(Duration::from_millis(100)),
            )
            .await;
        }
    }
}

const REQUESTS: Table = Table::new(&[
    col("REQUEST", 36),
    col("START (UTC)", 24),
    col("REQUESTOR", 12),
    col("VM", 10),
    col("PORT", 8),
    col("STATUS", 10),
    col("REASON", 22),
    col("CONNS", 6),
    col("SOURCE", 24),
    col("END (UTC)", 22),
    col("JUSTIFICATION", 0),
])
.gap("  ");

/// One row per requested port.
pub fn print_requests(reqs: &[RequestView]) {
    REQUESTS.print_header();
    for r in reqs {
        for vm in &r.virtual_machines {
            for p in &vm.ports {
                REQUESTS.print_row(&[
                    r.id.clone(),
                    r.start_time_utc.clone(),
                    r.requestor.clone(),
                    vm.id.clone(),
                    format!("{}/{}", p.number, p.protocol),
                    p.status.to_string(),
                    or_dash(p.status_reason.as_ref()),
                    or_dash(p.max_connections.as_ref()),
                    prefixes(
                        p.allowed_source_address_prefix.as_deref(),
                        p.allowed_source_address_prefixes.as_deref(),
                    ),
                    p.end_time_utc.clone(),
                    r.justification.clone(),
                ]);
            }
        }
    }
}

/// Why a request was denied, port by port (on stderr: the request itself is the output).
pub fn print_denial(r: &RequestView) {
    eprintln!("request {} was DENIED:", safe(&r.id));
    for d in &r.denial_reasons {
        eprintln!(
            "  {} port {}/{}: {} - {}",
            safe(&d.virtual_machine),
            d.number,
            d.protocol,
            safe(d.reason.as_str()),
            safe(&d.message)
        );
    }
}

/// Every decision recorded on the request.
pub fn print_approvals(r: &RequestView) {
    for a in &r.approvals {
        println!(
            "  {} {}{} by {}{}{}",
            safe(&a.time_utc),
            a.decision,
            a.stage.map(|s| format!(" (stage {s})")).unwrap_or_default(),
            safe(&a.approver),
            if a.emergency { " [EMERGENCY]" } else { "" },
            a.reason
                .as_deref()
                .map(|x| format!(": {}", safe(x)))
                .unwrap_or_default()
        );
    }
}

/// What a pending request still needs: per rule, its current stage and its approvers.
pub fn print_pending(r: &RequestView) {
    for p in &r.pending_approval {
        println!(
            "  request {} waits for stage {}/{}: {} of {} approved ({}); approvers: {}",
            safe(&r.id),
            p.stage,
            p.stages,
            p.approved_by.len(),
            p.required,
            if p.approved_by.is_empty() {
                "none yet".to_string()
            } else {
                safe(&p.approved_by.join(", ")).into_owned()
            },
            safe(&p.approvers.join(", "))
        );
    }
    if let Some(d) = &r.approval_deadline_utc {
        println!("  times out at {}", safe(d));
    }
}
