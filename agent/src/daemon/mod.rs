//! `jit-agent run`: the host daemon.
//!
//! One task, the core ([`core`]), owns the data plane and the grant table and handles every
//! change in order. Around it:
//! - [`writer`]: a thread that owns the journal and the audit log and makes batches durable
//!   with one fsync (group commit). A grant is acknowledged only after it is in the map AND
//!   its journal and audit records are fsynced.
//! - [`admin_server`]: the root-only admin socket (local break-glass grants, status, audit).
//! - [`controller`]: signed grants, revocations and policies from the controller channel
//!   (`crate::channel` keeps the connection), and the status reports it sends back.
//! - [`booking`]: booked grants, kept out of the maps and opened by the core's timer.
//! - [`answers`]: verification, refusals and durable answers shared by the two above.
//! - [`keys`]: a grant-signing key rotation (announced key kept, retired key refused).
//! - [`interfaces`]: attaching to configured interfaces, also ones that appear later.
//! - [`flows`]: adopted sessions, flows handed over or cut when their grant ends, idle sweep.
//! - [`audit_feed`]: kernel connection events and checkpoints, straight to the writer.
//! - [`metrics`]: the optional read-only Prometheus endpoint.

mod admin_server;
mod answers;
mod audit_feed;
mod booking;
mod controller;
mod core;
mod flows;
mod interfaces;
mod keys;
mod metrics;
mod writer;

use self::core::{Core, Msg, expired};
use self::interfaces::Interfaces;
use self::writer::{AuditHead, WriteJob};
use crate::audit::{AuditEvent, AuditLine, AuditLog};
use crate::channel::{Channel, ChannelRequest, ChannelState, MarkSaver, SharedState};
use crate::clock::BootInstant;
use crate::config::AgentConfig;
use crate::dataplane::{Dataplane, DataplaneOptions};
use crate::endpoints::Endpoints;
use crate::enroll::Enrollment;
use crate::grant::boot_id;
use crate::grant_table::GrantTable;
use crate::journal::{Journal, Record};
use jitgate_proto::{AuditKind, PolicyBody, Signed};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc};

/// Audit files rotate at this size.
pub const AUDIT_ROTATE_BYTES: u64 = 64 << 20;
/// Flows are swept this often (idle `keep` flows, flows of ended `cut` grants).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Dataplane(#[from] crate::error::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the enrolment names a bad controller endpoint ({0}); enrol again")]
    Enrollment(jitgate_proto::EndpointError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The controller's last signed policy, if it verifies: the protected set it sets.
fn stored_policy(cfg: &AgentConfig, e: &Enrollment) -> Option<Vec<jitgate_common::ProtectedPort>> {
    let text = std::fs::read(cfg.state_dir.join(controller::POLICY_FILE)).ok()?;
    let signed: Signed<PolicyBody> = serde_json::from_slice(&text).ok()?;
    match e.keys.verify(&signed, e.agent_id) {
        Ok(p) => {
            let mut ports = p.ports;
            ports.sort();
            ports.dedup();
            Some(ports)
        }
        Err(err) => {
            tracing::error!(error = %err, "stored policy does not verify; using the local config");
            None
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT (enforcement stays) or a detach (it does not).
pub async fn run(cfg: AgentConfig) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(io(format!("creating {}", cfg.state_dir.display())))?;
    let _ = std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700));
    let (journal, replay) =
        Journal::open(&cfg.state_dir).map_err(io("opening the grant journal"))?;
    if replay.truncated_bytes > 0 || replay.corrupt_records > 0 {
        tracing::warn!(
            truncated_bytes = replay.truncated_bytes,
            corrupt_records = replay.corrupt_records,
            "grant journal repaired"
        );
    }
    let mut log =
        AuditLog::open(&cfg.state_dir, AUDIT_ROTATE_BYTES).map_err(io("opening the audit log"))?;
    let enrollment = match Enrollment::load(&cfg.state_dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "audit checkpoints disabled: no enrolment key");
            tracing::error!(error = %e, "enrolment unreadable; running without a controller");
            None
        }
    };
    // Once enrolled, the agent signs its chain head with its enrolment key.
    if let Some(e) = &enrollment {
        match crate::audit::Signer::for_enrollment(e) {
            Ok(s) => log.set_signer(s),
            Err(err) => {
                tracing::error!(error = %err, "audit checkpoints disabled: no enrolment key")
            }
        }
    }
    let head: AuditHead = Arc::new(Mutex::new({
        let (h, s) = log.head();
        (h.to_string(), s)
    }));

    let mut opts = DataplaneOptions::new(&cfg.pin_dir);
    opts.flow_idle_timeout = cfg.flow_idle_timeout;
    let mut dp = Dataplane::open(&opts)?;
    let adopted = dp.adopted();
    dp.set_protected(&cfg.protected)?;

    let (wtx, wrx) = mpsc::channel::<WriteJob>(65536);
    let (lines_tx, _) = broadcast::channel::<AuditLine>(4096);
    let writer = writer::spawn(journal, log, wrx, lines_tx.clone(), head.clone())
        .map_err(io("starting the journal writer"))?;
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let bid = boot_id();
    let chan: SharedState = Arc::new(Mutex::new({
        // The journal carries the high-water mark since it rose with every grant;
        // channel.json holds an older one (or the only one, from an older agent).
        let mut c = ChannelState::load(&cfg.state_dir);
        c.seq_high_water = c.seq_high_water.max(replay.high_water);
        c
    }));
    let marks = MarkSaver::spawn(chan.clone(), cfg.state_dir.clone());
    // The merged marks on disk at once (see the stop below for why).
    marks.durable().await;
    let mut core = Core {
        cfg: cfg.clone(),
        dp,
        grants: GrantTable::new(bid.clone()),
        writer: wtx.clone(),
        me: tx.clone(),
        interfaces: Interfaces::default(),
        started: OffsetDateTime::now_utc(),
        head: head.clone(),
        removed_since_compact: 0,
        detached: false,
        enrollment: None,
        chan: chan.clone(),
        marks: marks.clone(),
        controller: Default::default(),
        cert_problem: Default::default(),
        closed_by_controller: Default::default(),
        controller_level: Default::default(),
        schedule: Default::default(),
        outbox: None,
        unsent: Vec::new(),
    };
    if let Some(e) = enrollment {
        // The controller's last signed policy, if any, sets the protected set; the local
        // config is the baseline before the first one arrives.
        if let Some(ports) = stored_policy(&cfg, &e) {
            core.dp.set_protected(&ports)?;
            core.cfg.protected = ports;
        }
        tracing::info!(agent = %e.agent_id, vm = %e.vm, endpoint = %e.endpoint, "enrolled");
        core.enrollment = Some(e);
    }

    // Restore from the journal: every grant still running, none resurrected after its end.
    let now = BootInstant::now();
    let mut journal_fix = Vec::new();
    let mut startup_events = Vec::new();
    for mut g in replay.grants.into_values() {
        let exp = g.expires(&bid);
        if exp <= now {
            let (r, e) = expired(&g, "Expired while the agent was down");
            journal_fix.push(r);
            startup_events.push(e);
            continue;
        }
        if g.boot_id != bid {
            // A reboot: pin the end to this boot's clock from now on.
            g.boot_id = bid.clone();
            g.expires_boot_ns = exp.0;
            journal_fix.push(Record::Grant(g.clone()));
        }
        if let Err(e) = core.grants.insert(&g) {
            tracing::error!(grant = %g.id, error = %e, "journal record not restored");
        }
    }
    // Bookings wait again; one whose start passed while the agent was down opens at the
    // first wake, one whose end passed never opens.
    for b in replay.scheduled.into_values() {
        let rebased = b.clone().rebased(&bid);
        if BootInstant(rebased.grant.expires_boot_ns) <= now {
            let reason = "Booked; ended while the agent was down, never opened";
            let (r, e) = expired(&rebased.grant, reason);
            journal_fix.push(r);
            startup_events.push(e);
            continue;
        }
        if rebased != b {
            journal_fix.push(Record::Scheduled(rebased.clone()));
        }
        core.schedule.insert(rebased);
    }
    core.dp.reconcile_grants(core.grants.iter().map(|g| {
        (
            g.id(),
            g.spec(),
            BootInstant(g.expires_boot_ns()),
            g.max_connections(),
        )
    }))?;
    // The replay's records are gone: give their memory back before serving.
    core.trim_heap();
    startup_events.extend(flows::adopt_sessions(&mut core.dp, &core.cfg.protected));
    let mut started = AuditEvent::new(AuditKind::AgentStarted, "agent");
    started.reason = Some(format!(
        "{} active grant(s) and {} booking(s) restored; {}; protected: {}",
        core.grants.len(),
        core.schedule.len(),
        if adopted {
            "adopted pinned enforcement"
        } else {
            "fresh maps"
        },
        cfg.protected
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    startup_events.insert(0, started);
    let (job, done) = WriteJob::durable(journal_fix, startup_events);
    core.write(job).await;
    let _ = done.await;
    rescan(&mut core).await;

    audit_feed::spawn_checkpoints(cfg.audit_checkpoint_interval, wtx.clone());
    audit_feed::spawn_events(core.dp.take_events()?, wtx.clone());
    admin_server::listen(
        &cfg.socket,
        tx.clone(),
        cfg.state_dir.clone(),
        lines_tx.clone(),
    )
    .map_err(|(what, source)| DaemonError::Io { what, source })?;
    let rescans = Arc::new(tokio::sync::Notify::new());
    {
        let r = rescans.clone();
        std::thread::Builder::new()
            .name("link-watch".into())
            .spawn(move || interfaces::watch_links(r))
            .map_err(io("starting the interface watcher"))?;
    }
    if let Some(addr) = cfg.metrics {
        tokio::spawn(metrics::serve(addr, tx.clone()));
    }
    let (chan_tx, mut chan_rx) = mpsc::channel::<ChannelRequest>(1024);
    if let Some(e) = core.enrollment.clone() {
        let enrolled = e.endpoint.parse().map_err(DaemonError::Enrollment)?;
        let endpoints = Endpoints::load(
            &cfg.state_dir,
            cfg.controller_endpoints.clone(),
            enrolled,
            &e.endpoints,
        );
        tokio::spawn(
            Channel {
                endpoints,
                connected: core.controller.clone(),
                cert_problem: core.cert_problem.clone(),
                closed_by_controller: core.closed_by_controller.clone(),
                controller_level: core.controller_level.clone(),
                enrollment: e,
                state: core.chan.clone(),
                state_dir: cfg.state_dir.clone(),
                marks: core.marks.clone(),
                core: chan_tx.clone(),
                lines: lines_tx.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            }
            .run(),
        );
    }
    tracing::info!(
        pin_dir = %cfg.pin_dir.display(),
        socket = %cfg.socket.display(),
        grants = core.grants.len(),
        "jit-agent running"
    );
    // Tell whoever started us (tests, systemd notify-less setups) that we are serving.
    let _ = std::fs::write(
        cfg.state_dir.join("agent.ready"),
        std::process::id().to_string(),
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("installing the SIGTERM handler"))?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let wake = core.next_wake();
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Admin { req, actor, reply }) => {
                    admin_server::handle(&mut core, req, actor, reply).await;
                    if core.detached {
                        break;
                    }
                }
                Some(Msg::Metrics(reply)) => {
                    let _ = reply.send(metrics::render(&core));
                }
                Some(Msg::Rollback(ids)) => core.rollback(&ids),
                Some(Msg::Unsent(m)) => core.send_or_keep(m).await,
                Some(Msg::ReportGrants) => {
                    if let Some(o) = &core.outbox {
                        let _ = o.send(controller::grants_report(&core)).await;
                    }
                }
                None => break,
            },
            Some(req) = chan_rx.recv() => match req {
                ChannelRequest::Handle(m, out) => {
                    core.connected(&out).await;
                    controller::handle(&mut core, m, out).await
                }
                ChannelRequest::Heartbeat(reply) => {
                    let _ = reply.send(controller::heartbeat(&mut core));
                }
            },
            // A burst of link messages coalesces into one rescan (Notify keeps one permit).
            _ = rescans.notified() => rescan(&mut core).await,
            _ = tokio::time::sleep(wake) => {
                booking::open_due(&mut core).await;
                core.expire_due().await;
            }
            _ = sweep.tick() => core.sweep().await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let mut stop = AuditEvent::new(AuditKind::AgentStopped, "agent");
    stop.reason = Some(if core.detached {
        "after detach".into()
    } else {
        "signal; enforcement stays pinned".into()
    });
    let (job, done) = WriteJob::durable(
        Vec::new(),
        vec![stop, AuditEvent::new(AuditKind::AuditCheckpoint, "agent")],
    );
    core.write(job).await;
    let _ = done.await;
    // channel.json with the marks as they end: an older agent started on this state
    // directory reads the high-water mark from it alone.
    core.marks.durable().await;
    drop(core);
    drop(wtx);
    drop(tx);
    let _ = std::fs::remove_file(&cfg.socket);
    let _ = std::fs::remove_file(cfg.state_dir.join("agent.ready"));
    // The stop record above is durable. The writer may still hold data-plane events in
    // flight; those are not waited for (the event reader keeps a sender open).
    drop(writer);
    Ok(())
}

/// Attaches to new matching interfaces and records what happened.
async fn rescan(core: &mut Core) {
    let events = core.interfaces.rescan(&mut core.dp, &core.cfg.interfaces);
    if !events.is_empty() {
        core.write(WriteJob::audit(events, true)).await;
    }
}

/// Detaches without a running agent: removes every pin and records it in the audit log.
pub fn detach_offline(
    pin_dir: &std::path::Path,
    state_dir: &std::path::Path,
    actor: &str,
) -> Result<(), DaemonError> {
    crate::dataplane::remove_pins(pin_dir)?;
    let mut log =
        AuditLog::open(state_dir, AUDIT_ROTATE_BYTES).map_err(io("opening the audit log"))?;
    let mut e = AuditEvent::new(AuditKind::AgentDetached, actor);
    e.reason = Some(format!("offline detach of {}", pin_dir.display()));
    log.append([e]).map_err(io("writing the audit log"))?;
    log.sync().map_err(io("syncing the audit log"))?;
    Ok(())
}
