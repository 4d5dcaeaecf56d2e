//! `jit audit`: the activity log (query, CSV and JSON-lines export), its verification
//! (`verify`, also `--offline` from an export file with no controller), `export` and
//! `checkpoint`; with `--agent --vm VM`, the records the VM's agents delivered, and their
//! verification (docs/controller.md, "Activity log" and "Agent audit").

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use jitgate_api::{
    ActivityEntry, ActivityExport, ActivityQuery, AgentChainReport, AgentRecord, Format,
    VerifyReport, ViewQuery,
};
use jitgate_proto::audit::parse_public_key;
use serde::Deserialize;

use crate::client::Client;
use crate::cmd::Window;
use crate::exit::{self, Fail, R};
use crate::output::{ExportKind, Out, print_export, print_json, print_raw};
use crate::table::{Table, col, or_dash};
use crate::text::safe;

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    verify: Option<AuditCmd>,
    /// Only this VM.
    #[arg(long)]
    vm: Option<String>,
    /// Only this resource group.
    #[arg(long)]
    resource_group: Option<String>,
    /// Only this caller (token name).
    #[arg(long)]
    caller: Option<String>,
    /// Only this resource type: VirtualMachine, ResourceGroup, Token.
    #[arg(long)]
    resource_type: Option<String>,
    /// Only this operation, as entries name it ("Initiate JIT Network Access", ...).
    #[arg(long)]
    operation: Option<String>,
    /// Only this outcome: Succeeded, Denied or Failed.
    #[arg(long)]
    outcome: Option<String>,
    #[command(flatten)]
    window: Window,
    /// Export as CSV.
    #[arg(long, conflicts_with = "jsonl")]
    csv: bool,
    /// Export as JSON lines.
    #[arg(long)]
    jsonl: bool,
    /// The agents' own audit records of `--vm` instead of the controller's activity log.
    #[arg(long, requires = "vm", conflicts_with_all = ["resource_group", "caller", "resource_type", "operation", "outcome", "csv", "jsonl"])]
    agent: bool,
    /// With --agent: only this record kind (grant.applied, connection.admitted, ...).
    #[arg(long, requires = "agent")]
    kind: Option<String>,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the activity log: its hash chain, and every signed checkpoint of the chain head
    /// (a rewrite that recomputed the later hashes no longer matches the checkpoint after it).
    /// With `--agent --vm VM`: the records the VM's agents delivered, and the checkpoints the
    /// agents signed with their enrolment keys. Exit 9 and name the first bad entry or
    /// checkpoint if it fails.
    Verify {
        /// Verify an export file (`jit audit export`) instead, with no controller. Given
        /// several times, the files are one log, oldest first: the archives `jit-controller
        /// prune --archive` wrote, then an export of what remains; each must continue the
        /// one before it. An export of a pruned log also verifies alone, from the signed
        /// checkpoint it starts after.
        #[arg(long, value_name = "FILE")]
        offline: Vec<PathBuf>,
        /// With --offline: trust only this public key (SPKI PEM; the controller's
        /// keys/checkpoint.pub), not the one the file carries. Given several times (the old
        /// and the new public key, after the checkpoint key was replaced): each checkpoint
        /// is checked with the key it names, and each file's own key must be one of them.
        /// Files under several keys verify only so.
        #[arg(long, value_name = "PEM", requires = "offline")]
        key: Vec<PathBuf>,
    },
    /// Write the whole activity log with its signed checkpoints and the controller's public
    /// key to FILE, for `jit audit verify --offline FILE` (docs/controller.md).
    Export { file: PathBuf },
    /// Sign the chain head now (admin; the controller also does it periodically).
    Checkpoint,
}

impl AuditArgs {
    /// `verify --offline FILE... [--key PEM]...`: needs no controller (and no configuration).
    pub fn offline(&self) -> Option<(&[PathBuf], &[PathBuf])> {
        match &self.verify {
            Some(AuditCmd::Verify { offline, key }) if !offline.is_empty() => {
                Some((offline.as_slice(), key.as_slice()))
            }
            _ => None,
        }
    }
}

pub async fn run(c: &Client, a: &AuditArgs, out: Out) -> R<()> {
    let vm = a.vm.as_deref().unwrap_or_default();
    match (&a.verify, a.agent) {
        (Some(AuditCmd::Verify { .. }), true) => return agent_verify(c, vm, out).await,
        (Some(AuditCmd::Verify { .. }), false) => {
            let r = c.verify_activity().await?;
            return report(&r, r.text(), out, "activity log");
        }
        (Some(AuditCmd::Export { file }), _) => return export(c, file, out).await,
        (Some(AuditCmd::Checkpoint), _) => return checkpoint(c, out).await,
        (None, true) => return agent_records(c, a, vm, out).await,
        (None, false) => {}
    }
    let mut q = ActivityQuery {
        resource_type: a.resource_type.clone(),
        vm: a.vm.clone(),
        resource_group: a.resource_group.clone(),
        caller: a.caller.clone(),
        operation: a.operation.clone(),
        outcome: a.outcome.clone(),
        from: a.window.since.clone(),
        to: a.window.until.clone(),
        limit: a.window.limit(),
        ..ActivityQuery::default()
    };
    if a.csv || a.jsonl {
        let (format, kind) = if a.csv {
            (Format::Csv, ExportKind::Csv)
        } else {
            (Format::Jsonl, ExportKind::JsonLines)
        };
        q.format = Some(format);
        return print_export(&c.activity_text(&q).await?, kind);
    }
    let log = c.activity(&q).await?;
    out.show_list(&log, print_activity)
}

const ACTIVITY: Table = Table::new(&[
    col("SEQ", 6),
    col("TIME (UTC)", 24),
    col("OPERATION", 34),
    col("GROUP", 10),
    col("VM", 10),
    col("CALLER", 14),
    col("ADDRESS", 16),
    col("OUTCOME", 0),
]);

fn print_activity(entries: &[ActivityEntry]) {
    ACTIVITY.print_header();
    for e in entries {
        ACTIVITY.print_row(&[
            e.seq.to_string(),
            e.time_utc.clone(),
            e.operation.clone(),
            e.resource_group.clone(),
            e.virtual_machine.clone(),
            e.caller.clone(),
            e.caller_address.clone(),
            e.outcome.clone(),
        ]);
    }
}

/// Prints a verification report (from the controller, or of an export offline) and fails
/// with `VERIFY_FAILED` if it is not ok. `text` is the report as JSON for `--json`.
fn report(r: &VerifyReport, text: &str, out: Out, what: &str) -> R<()> {
    if out.json {
        print_raw(text)?;
    } else if r.ok {
        let covered = if r.covered_seq > 0 {
            format!("entries 1..{} covered", r.covered_seq)
        } else {
            "no entry covered yet".to_string()
        };
        println!(
            "{what} OK: {} entries, head {}; {} signed checkpoints (key {}), {covered}, {} not yet covered",
            r.entries,
            safe(&r.head_hash),
            r.checkpoints,
            safe(&or_dash(r.key_id.as_deref())),
            r.uncovered
        );
    } else {
        let cp = r
            .bad_checkpoint_seq
            .map(|n| format!(" (checkpoint at entry {n})"))
            .unwrap_or_default();
        println!(
            "{what} FAILED verification at entry {}{cp}: {}",
            or_dash(r.first_bad_seq),
            safe(&or_dash(r.problem.as_deref()))
        );
    }
    if !r.ok {
        return Err(Fail::new(
            exit::VERIFY_FAILED,
            format!("{what} verification failed"),
        ));
    }
    Ok(())
}

/// Verifies an export file from its content alone (no controller). With `keys`, only those
/// public keys (SPKI PEM, the controller's `keys/checkpoint.pub`) are trusted.
/// Several files are one log, oldest first (archives of pruned ranges, then the rest).
pub fn verify_offline(files: &[PathBuf], keys: &[PathBuf], out: Out) -> R<()> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| Fail::error(format!("{}: {e}", p.display())))
    };
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let all = names.join(" + ");
    let bad = |msg: String| Fail::new(exit::VERIFY_FAILED, format!("{all}: {msg}"));
    let mut parts = Vec::with_capacity(files.len());
    for f in files {
        let x: ActivityExport = serde_json::from_str(&read(f)?).map_err(|e| {
            Fail::new(
                exit::VERIFY_FAILED,
                format!("{}: not an activity log export: {e}", f.display()),
            )
        })?;
        parts.push(x);
    }
    let pinned = keys
        .iter()
        .map(|k| {
            parse_public_key(&read(k)?).map_err(|e| Fail::usage(format!("{}: {e}", k.display())))
        })
        .collect::<R<Vec<_>>>()?;
    let r = ActivityExport::verify_parts(parts, &pinned).map_err(bad)?;
    let text = serde_json::to_string(&r).map_err(|e| Fail::error(e.to_string()))?;
    report(&r, &text, out, "activity log export")
}

/// Writes the controller's export, as received, to `file`.
async fn export(c: &Client, file: &Path, out: Out) -> R<()> {
    let x = c.export_activity().await?;
    std::fs::write(file, x.text()).map_err(|e| Fail::error(format!("{}: {e}", file.display())))?;
    let (n, k) = (x.entries.len(), x.checkpoints.len());
    if out.json {
        print_json(
            &serde_json::json!({"file": file, "entries": n, "checkpoints": k, "keyId": x.key_id}),
        );
    } else {
        println!(
            "wrote {n} entries and {k} checkpoints (key {}) to {}",
            safe(&x.key_id),
            file.display()
        );
    }
    Ok(())
}

/// Signs the chain head now.
async fn checkpoint(c: &Client, out: Out) -> R<()> {
    let cp = c.sign_checkpoint().await?;
    out.show(&cp, |cp| {
        println!(
            "checkpoint at entry {}: {} (key {})",
            cp.seq,
            safe(&cp.hash),
            safe(&cp.key_id)
        );
    })
}

/// What the table shows of an agent's record (a newer agent's record may lack any of it, or
/// not be JSON at all: then it shows `-`).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RecordView {
    seq: Option<u64>,
    time: Option<String>,
    kind: Option<String>,
    actor: Option<String>,
    source: Option<String>,
    protocol: Option<String>,
    port: Option<u16>,
    grant_id: Option<String>,
    reason: Option<String>,
}

impl RecordView {
    fn of(r: &AgentRecord) -> RecordView {
        RecordView::deserialize(&r.record).unwrap_or_default()
    }

    /// `protocol=TCP port=22 grantId=... reason=...`, for the fields present.
    fn detail(&self) -> String {
        let port = self.port.map(|p| p.to_string());
        [
            ("protocol", self.protocol.as_deref()),
            ("port", port.as_deref()),
            ("grantId", self.grant_id.as_deref()),
            ("reason", self.reason.as_deref()),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

const RECORDS: Table = Table::new(&[
    col("SEQ", 6),
    col("TIME (agent clock)", 32),
    col("KIND", 22),
    col("ACTOR", 28),
    col("SOURCE", 28),
    col("DETAIL", 0),
]);

async fn agent_records(c: &Client, a: &AuditArgs, vm: &str, out: Out) -> R<()> {
    let q = ViewQuery {
        from: a.window.since.clone(),
        to: a.window.until.clone(),
        limit: a.window.limit(),
        kind: a.kind.clone(),
        ..ViewQuery::default()
    };
    let list = c.agent_audit(vm, &q).await?;
    out.show_list(&list, |list: &[AgentRecord]| {
        RECORDS.print_header();
        for x in list {
            let r = RecordView::of(x);
            RECORDS.print_row(&[
                or_dash(r.seq),
                or_dash(r.time.as_deref()),
                or_dash(r.kind.as_deref()),
                or_dash(r.actor.as_deref()),
                or_dash(r.source.as_deref()),
                r.detail(),
            ]);
        }
    })
}

/// `jit audit --agent --vm VM verify`: the VM's agents' delivered records and their signed
/// checkpoints, verified at the controller.
async fn agent_verify(c: &Client, vm: &str, out: Out) -> R<()> {
    let v = c.verify_agent_audit(vm).await?;
    out.show(&v, |v| {
        for a in &v.agents {
            print_chain(a);
        }
    })?;
    if !v.ok {
        return Err(Fail::new(
            exit::VERIFY_FAILED,
            format!("agent audit verification failed for {vm}"),
        ));
    }
    Ok(())
}

fn print_chain(a: &AgentChainReport) {
    if a.ok {
        println!(
            "agent {}: OK, {} records (seq {}..{}), {} signed checkpoints, covered up to seq {}, {} not yet covered",
            safe(&a.agent_id),
            a.records,
            or_dash(a.first_seq),
            or_dash(a.last_seq),
            a.checkpoints,
            or_dash(a.covered_seq),
            a.uncovered
        );
    } else {
        println!(
            "agent {}: FAILED verification at record {}: {}",
            safe(&a.agent_id),
            or_dash(a.first_bad_seq),
            safe(&or_dash(a.problem.as_deref()))
        );
    }
}
