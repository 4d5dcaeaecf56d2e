//! `jit-agent run`: the host daemon.
//!
//! One task (the core) owns the data plane and the grant table and handles every change in
//! order; a writer thread owns the journal and the audit log and makes batches durable with
//! one fsync (group commit); the admin socket, the interface watcher, the event reader and
//! the metrics endpoint talk to the core over channels. A grant is acknowledged only after
//! it is in the map AND its journal and audit records are fsynced.

use crate::admin::{self, ErrorCode, GrantRequest, InterfaceStatus, Request, Response, Status};
use crate::audit::{self, AuditEvent, AuditLine, AuditLog};
use crate::clock::BootInstant;
use crate::config::{AgentConfig, ProtoSpec, glob_match};
use crate::dataplane::{AttachMode, Dataplane, DataplaneOptions};
use crate::events::DataplaneEvent;
use crate::grant::{GrantId, GrantRecord, Origin, boot_id};
use crate::journal::{Journal, Record, RemoveReason};
use crate::link::LinkLayer;
use crate::sockdiag::{self, TcpConn};
use jitgate_common::{Counter, EventKind, FlowEntry, FlowKey, OnExpiry, Protocol, SourcePrefix};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The last signed policy from the controller, kept across restarts.
const POLICY_FILE: &str = "policy.json";

/// Audit files rotate at this size.
pub const AUDIT_ROTATE_BYTES: u64 = 64 << 20;
/// Flows are swept this often (idle `keep` flows, flows of ended `cut` grants).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Dataplane(#[from] crate::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

struct WriteJob {
    journal: Vec<Record>,
    audit: Vec<AuditEvent>,
    /// fsync before answering (grant changes); data-plane events only need ordering.
    durable: bool,
    compact: Option<Vec<GrantRecord>>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

impl WriteJob {
    fn audit(events: Vec<AuditEvent>, durable: bool) -> Self {
        WriteJob {
            journal: Vec::new(),
            audit: events,
            durable,
            compact: None,
            done: None,
        }
    }
}

type Head = Arc<Mutex<(String, u64)>>;

/// The writer thread: group commit of journal and audit records.
fn writer_thread(
    mut journal: Journal,
    mut log: AuditLog,
    mut rx: mpsc::Receiver<WriteJob>,
    lines: broadcast::Sender<AuditLine>,
    head: Head,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < 4096 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let records: Vec<Record> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.journal))
            .collect();
        let durable = jobs.iter().any(|j| j.durable);
        let mut result: Result<(), String> = journal
            .append(&records)
            .map_err(|e| format!("journal: {e}"));
        let events: Vec<AuditEvent> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.audit))
            .collect();
        match log.append(events) {
            Ok(written) => {
                if durable && let Err(e) = log.sync() {
                    result = Err(format!("audit log: {e}"));
                }
                for l in written {
                    let _ = lines.send(l);
                }
                if let Ok(mut h) = head.lock() {
                    let (hash, seq) = log.head();
                    *h = (hash.to_string(), seq);
                }
            }
            Err(e) => result = Err(format!("audit log: {e}")),
        }
        if let Some(live) = jobs.iter_mut().rev().find_map(|j| j.compact.take())
            && let Err(e) = journal.compact(live.iter())
        {
            tracing::error!(error = %e, "journal compaction failed");
        }
        for j in jobs {
            if let Some(done) = j.done {
                let _ = done.send(result.clone());
            }
        }
    }
    let _ = log.sync();
}

enum Msg {
    Admin {
        req: Request,
        actor: String,
        reply: oneshot::Sender<Response>,
    },
    Metrics(oneshot::Sender<String>),
    Rollback(Vec<GrantId>),
}

struct Core {
    cfg: AgentConfig,
    dp: Dataplane,
    table: HashMap<GrantId, GrantRecord>,
    deadlines: BTreeSet<(u64, GrantId)>,
    writer: mpsc::Sender<WriteJob>,
    me: mpsc::Sender<Msg>,
    boot_id: Arc<str>,
    /// Requester names, shared by their grants.
    requesters: HashMap<String, Arc<str>>,
    attached: BTreeMap<String, Attached>,
    /// Devices (name, ifindex) refused for their link type: reported once, not at every
    /// rescan. A new device under the same name gets its own try.
    refused: BTreeSet<(String, u32)>,
    started: OffsetDateTime,
    head: Head,
    removed_since_compact: usize,
    detached: bool,
    /// Set when enrolled with a controller.
    enrollment: Option<crate::enroll::Enrollment>,
    chan: crate::channel::SharedState,
}

/// An interface the program runs on. The ifindex tells a device from a later one that took
/// its name (a tunnel deleted and created again between two rescans).
#[derive(Clone, Copy)]
struct Attached {
    ifindex: u32,
    mode: AttachMode,
    link: LinkLayer,
}

fn grant_event(kind: &str, actor: &str, g: &GrantRecord, reason: Option<&str>) -> AuditEvent {
    AuditEvent {
        kind: kind.into(),
        actor: actor.into(),
        source: Some(g.source.to_string()),
        protocol: Some(g.protocol.to_string()),
        port: Some(g.port.get()),
        window: Some((g.start, g.end)),
        grant_id: Some(g.id.to_string()),
        reason: reason.map(String::from),
        time: None,
    }
}

fn flow_source(k: &FlowKey) -> IpAddr {
    if k.family == jitgate_common::event::FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(
            k.saddr[0], k.saddr[1], k.saddr[2], k.saddr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.saddr))
    }
}

fn flow_conn(k: &FlowKey) -> TcpConn {
    let dst = if k.family == jitgate_common::event::FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(
            k.daddr[0], k.daddr[1], k.daddr[2], k.daddr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.daddr))
    };
    TcpConn {
        local: SocketAddr::new(dst, u16::from_be_bytes(k.dport)),
        remote: SocketAddr::new(flow_source(k), u16::from_be_bytes(k.sport)),
    }
}

impl Core {
    fn on_expiry(&self, proto: Protocol, port: u16) -> Option<OnExpiry> {
        self.cfg
            .protected
            .iter()
            .find(|p| p.protocol == proto && p.port.get() == port)
            .map(|p| p.on_expiry)
    }

    async fn write(&self, job: WriteJob) {
        if self.writer.send(job).await.is_err() {
            tracing::error!("the journal writer has stopped");
        }
    }

    fn validate(
        &self,
        r: &GrantRequest,
        now: OffsetDateTime,
    ) -> Result<(Vec<Protocol>, Duration), String> {
        let spec: ProtoSpec = r.protocol.parse()?;
        let d = match (r.duration_secs, r.until) {
            (Some(_), Some(_)) => return Err("give a duration or an end time, not both".into()),
            (None, None) => {
                return Err("give a duration (--duration) or an end time (--until)".into());
            }
            (Some(0), None) => return Err("the duration must be longer than zero".into()),
            (Some(s), None) => Duration::from_secs(s),
            (None, Some(until)) => {
                if until <= now {
                    return Err(format!("the end time {until} is in the past"));
                }
                (until - now)
                    .try_into()
                    .map_err(|_| "the end time is out of range".to_string())?
            }
        };
        if d > self.cfg.max_grant {
            return Err(format!(
                "{} is longer than this host's maximum grant of {}",
                humantime::format_duration(d),
                humantime::format_duration(self.cfg.max_grant)
            ));
        }
        if let Some(j) = &r.justification
            && j.len() > admin::MAX_JUSTIFICATION
        {
            return Err(format!(
                "the justification is longer than {} bytes",
                admin::MAX_JUSTIFICATION
            ));
        }
        Ok((spec.protocols().to_vec(), d))
    }

    /// Applies grants to the maps and the table; durability is the caller's next step.
    fn apply_grants(
        &mut self,
        reqs: &[GrantRequest],
        actor: &str,
    ) -> Result<Vec<GrantRecord>, Response> {
        let now = OffsetDateTime::now_utc();
        let mut plans = Vec::new();
        for r in reqs {
            // Validate everything first: a bad entry changes nothing.
            let (protos, d) = self
                .validate(r, now)
                .map_err(|m| Response::error(ErrorCode::Invalid, m))?;
            plans.push((r, protos, d));
        }
        let boot_now = BootInstant::now();
        let name = actor.split(" (pid").next().unwrap_or(actor);
        let requester = self
            .requesters
            .entry(name.to_string())
            .or_insert_with(|| Arc::from(name))
            .clone();
        let mut out = Vec::new();
        for (r, protos, d) in plans {
            for protocol in protos {
                let g = GrantRecord {
                    id: GrantId::random(),
                    protocol,
                    port: r.port,
                    source: r.source,
                    start: now,
                    end: now + d,
                    requester: requester.clone(),
                    justification: r.justification.clone().unwrap_or_default().into(),
                    origin: Origin::Local,
                    boot_id: self.boot_id.clone(),
                    expires_boot_ns: boot_now.saturating_add(d).0,
                };
                if let Err(e) = self
                    .dp
                    .add_grant(g.id, g.spec(), BootInstant(g.expires_boot_ns))
                {
                    for done in &out {
                        self.forget(done);
                    }
                    return Err(Response::error(ErrorCode::Internal, e.to_string()));
                }
                self.deadlines.insert((g.expires_boot_ns, g.id));
                self.table.insert(g.id, g.clone());
                out.push(g);
            }
        }
        Ok(out)
    }

    /// Removes a grant from maps, table and timers (no journal record).
    fn forget(&mut self, g: &GrantRecord) {
        let _ = self.dp.remove_grant(&g.id);
        self.table.remove(&g.id);
        self.deadlines.remove(&(g.expires_boot_ns, g.id));
    }

    /// The active grant, other than `except`, that covers (proto, port, src) longest.
    fn covering(&self, except: GrantId, proto: u8, port: u16, src: IpAddr) -> Option<&GrantRecord> {
        let now = BootInstant::now().0;
        self.table
            .values()
            .filter(|g| {
                g.id != except
                    && g.protocol.number() == proto
                    && g.port.get() == port
                    && g.expires_boot_ns > now
                    && g.source.contains_addr(src)
            })
            .max_by_key(|g| g.expires_boot_ns)
    }

    /// Flows admitted under `gone`: handed to another covering grant if there is one,
    /// otherwise removed and their sockets destroyed. Returns how many were cut.
    fn cut_flows(&mut self, gone: &GrantRecord) -> usize {
        let id = gone.id.to_bytes();
        let mut cut = 0;
        let mut close = Vec::new();
        for (k, mut e) in self.dp.flows() {
            if e.grant_id != id {
                continue;
            }
            let port = u16::from_be_bytes(k.dport);
            let src = flow_source(&k);
            if let Some(other) = self.covering(gone.id, k.proto, port, src) {
                e.grant_id = other.id.to_bytes();
                e.grant_expires_ns = other.expires_boot_ns;
                let _ = self.dp.insert_flow(k, e);
                continue;
            }
            let _ = self.dp.remove_flow(&k);
            if k.proto == Protocol::Tcp.number() {
                close.push(flow_conn(&k));
            }
            cut += 1;
        }
        if let Err(err) = sockdiag::destroy(&close) {
            tracing::warn!(error = %err, "could not close cut sessions");
        }
        cut
    }

    async fn handle_admin(
        &mut self,
        req: Request,
        actor: String,
        reply: oneshot::Sender<Response>,
    ) {
        match req {
            Request::Grant(r) => self.grant(vec![r], actor, reply).await,
            Request::GrantBatch(rs) => self.grant(rs, actor, reply).await,
            Request::Revoke { id } => self.revoke(&id, &actor, reply).await,
            Request::Grants => {
                let mut grants: Vec<GrantRecord> = self.table.values().cloned().collect();
                grants.sort_by_key(|g| (g.end, g.id));
                let _ = reply.send(Response::Grants { grants });
            }
            Request::Status => {
                let _ = reply.send(self.status());
            }
            Request::Detach => self.detach(&actor, reply).await,
            // Answered by the connection handler.
            Request::Audit { .. } | Request::AuditVerify => {
                let _ = reply.send(Response::error(ErrorCode::Internal, "misrouted request"));
            }
        }
    }

    async fn grant(
        &mut self,
        reqs: Vec<GrantRequest>,
        actor: String,
        reply: oneshot::Sender<Response>,
    ) {
        let grants = match self.apply_grants(&reqs, &actor) {
            Ok(g) => g,
            Err(resp) => {
                let mut e = AuditEvent::new("grant.rejected", &actor);
                if let Response::Error { message, .. } = &resp {
                    e.reason = Some(message.clone());
                }
                if let Some(r) = reqs.first() {
                    e.source = Some(r.source.to_string());
                    e.port = Some(r.port.get());
                    e.protocol = Some(r.protocol.clone());
                }
                self.write(WriteJob::audit(vec![e], false)).await;
                let _ = reply.send(resp);
                return;
            }
        };
        let (tx, rx) = oneshot::channel();
        let job = WriteJob {
            journal: grants.iter().cloned().map(Record::Grant).collect(),
            audit: grants
                .iter()
                .map(|g| grant_event("grant.applied", &actor, g, Some("local break-glass grant")))
                .collect(),
            durable: true,
            compact: None,
            done: Some(tx),
        };
        self.write(job).await;
        let me = self.me.clone();
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(())) => {
                    let _ = reply.send(Response::Granted { grants });
                }
                failed => {
                    let msg = match failed {
                        Ok(Err(e)) => e,
                        _ => "the journal writer stopped".into(),
                    };
                    let _ = me
                        .send(Msg::Rollback(grants.iter().map(|g| g.id).collect()))
                        .await;
                    let _ = reply.send(Response::error(
                        ErrorCode::Internal,
                        format!("not durable, rolled back: {msg}"),
                    ));
                }
            }
        });
    }

    async fn revoke(&mut self, id: &str, actor: &str, reply: oneshot::Sender<Response>) {
        let Ok(gid) = id.parse::<GrantId>() else {
            let _ = reply.send(Response::error(
                ErrorCode::Invalid,
                format!("{id:?} is not a grant id"),
            ));
            return;
        };
        let Some(g) = self.table.get(&gid).cloned() else {
            let _ = reply.send(Response::error(
                ErrorCode::NotFound,
                format!("no active grant {gid}"),
            ));
            return;
        };
        self.forget(&g);
        let cut = self.cut_flows(&g);
        self.removed_since_compact += 1;
        let (tx, rx) = oneshot::channel();
        let mut ev = grant_event("grant.revoked", actor, &g, Some("UserRequested"));
        if cut > 0 {
            ev.reason = Some(format!("UserRequested; {cut} session(s) closed"));
        }
        self.write(WriteJob {
            journal: vec![Record::Remove {
                id: gid,
                reason: RemoveReason::Revoked,
            }],
            audit: vec![ev],
            durable: true,
            compact: None,
            done: Some(tx),
        })
        .await;
        tokio::spawn(async move {
            let resp = match rx.await {
                Ok(Ok(())) => Response::Revoked {
                    id: gid.to_string(),
                    flows_cut: cut,
                },
                Ok(Err(e)) => Response::error(ErrorCode::Internal, e),
                Err(_) => Response::error(ErrorCode::Internal, "the journal writer stopped"),
            };
            let _ = reply.send(resp);
        });
    }

    /// Ends every grant whose end has passed: maps, table, journal, audit; for `cut` ports
    /// the sessions are closed too. The kernel already stopped admitting at the end.
    async fn expire_due(&mut self) {
        let now = BootInstant::now().0;
        let due: Vec<(u64, GrantId)> = self
            .deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .copied()
            .collect();
        if due.is_empty() {
            return;
        }
        let mut journal = Vec::new();
        let mut events = Vec::new();
        for (_, id) in due {
            let Some(g) = self.table.get(&id).cloned() else {
                self.deadlines.retain(|(_, i)| *i != id);
                continue;
            };
            self.forget(&g);
            let mut reason = "Expired".to_string();
            if self.on_expiry(g.protocol, g.port.get()) == Some(OnExpiry::Cut) {
                let cut = self.cut_flows(&g);
                if cut > 0 {
                    reason = format!("Expired; {cut} session(s) closed (on_expiry = cut)");
                }
            }
            journal.push(Record::Remove {
                id,
                reason: RemoveReason::Expired,
            });
            events.push(grant_event("grant.expired", "agent", &g, Some(&reason)));
            self.removed_since_compact += 1;
        }
        self.write(WriteJob {
            journal,
            audit: events,
            durable: true,
            compact: None,
            done: None,
        })
        .await;
    }

    /// Drops flows nobody needs: idle `keep` flows and adopted sessions, and flows of ended
    /// grants on `cut` ports. Also compacts the journal after many removals.
    async fn sweep(&mut self) {
        // Bursts of grants leave freed request and response buffers in the heap; give them
        // back so that the resident size tracks the live grant table.
        // SAFETY: glibc's malloc_trim only releases free memory.
        unsafe { libc::malloc_trim(0) };
        let now = BootInstant::now().0;
        let idle = self.cfg.flow_idle_timeout.as_nanos() as u64;
        for (k, e) in self.dp.flows() {
            let ended = e.grant_expires_ns <= now;
            let idle_past = e.last_seen_ns.saturating_add(idle) <= now;
            let cut_port = self.on_expiry(
                Protocol::from_number(k.proto).unwrap_or(Protocol::Tcp),
                u16::from_be_bytes(k.dport),
            ) != Some(OnExpiry::Keep);
            if idle_past && (ended || e.grant_expires_ns == u64::MAX) || ended && cut_port {
                let _ = self.dp.remove_flow(&k);
            }
        }
        if self.removed_since_compact >= 1000 {
            self.removed_since_compact = 0;
            let live: Vec<GrantRecord> = self.table.values().cloned().collect();
            self.write(WriteJob {
                journal: vec![],
                audit: vec![],
                durable: false,
                compact: Some(live),
                done: None,
            })
            .await;
        }
    }

    fn next_wake(&self) -> Duration {
        let cap = Duration::from_secs(1);
        match self.deadlines.first() {
            Some((t, _)) => BootInstant(*t).remaining().min(cap),
            None => cap,
        }
    }

    async fn rescan(&mut self) {
        let Ok(ifaces) = nix::net::if_::if_nameindex() else {
            return;
        };
        let mut events = Vec::new();
        for i in ifaces.iter() {
            let name = i.name().to_string_lossy().into_owned();
            let ifindex = i.index();
            let wanted = self.cfg.interfaces.iter().any(|p| {
                if name == "lo" {
                    p == "lo"
                } else {
                    glob_match(p, &name)
                }
            });
            if !wanted {
                continue;
            }
            // A device's link type can change while it is down (tun's TUNSETLINK, with a
            // link event): a known device whose type no longer matches its program is
            // attached again, which swaps the program or refuses the device.
            let layer = crate::link::link_layer(&name).ok();
            let known = match self.attached.get(&name) {
                Some(a) if a.ifindex == ifindex => layer == Some(a.link),
                _ => layer.is_none() && self.refused.contains(&(name.clone(), ifindex)),
            };
            if known {
                continue;
            }
            match self.dp.attach(&name) {
                Ok(a) => {
                    tracing::info!(iface = %name, mode = a.mode.as_str(), link = a.link.as_str(), replaced = a.replaced, "enforcing");
                    let mut e = AuditEvent::new("interface.attached", "agent");
                    e.reason = Some(format!(
                        "{} mode, {} program{}",
                        a.mode.as_str(),
                        a.link.as_str(),
                        if a.replaced {
                            ", program replaced in place"
                        } else {
                            ""
                        }
                    ));
                    e.source = Some(name.clone());
                    events.push(e);
                    let (mode, link) = (a.mode, a.link);
                    self.attached.insert(
                        name,
                        Attached {
                            ifindex,
                            mode,
                            link,
                        },
                    );
                }
                Err(err) => {
                    tracing::error!(iface = %name, error = %err, "cannot attach");
                    if matches!(err, crate::Error::UnsupportedLink { .. }) {
                        self.refused.insert((name.clone(), ifindex));
                        // A program for the old link type would mis-parse every packet: it
                        // goes, and the device is reported as not enforced.
                        if self.attached.remove(&name).is_some()
                            && let Err(e) = self.dp.detach(&name)
                        {
                            tracing::error!(iface = %name, error = %e, "cannot detach");
                        }
                    }
                    let mut e = AuditEvent::new("interface.attach_failed", "agent");
                    e.source = Some(name.clone());
                    e.reason = Some(err.to_string());
                    events.push(e);
                }
            }
        }
        // Interfaces that went away lose their (now defunct) links.
        let present: BTreeSet<String> = ifaces
            .iter()
            .map(|i| i.name().to_string_lossy().into_owned())
            .collect();
        self.attached.retain(|n, _| present.contains(n));
        self.refused.retain(|(n, _)| present.contains(n));
        if !events.is_empty() {
            self.write(WriteJob::audit(events, true)).await;
        }
    }

    /// Established TCP sessions to protected ports become admitted flows, so that turning
    /// enforcement on over SSH never cuts the session that did it.
    fn adopt_sessions(&mut self) -> Vec<AuditEvent> {
        let tcp_ports: BTreeSet<u16> = self
            .cfg
            .protected
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.port.get())
            .collect();
        let conns = match sockdiag::established(|p| tcp_ports.contains(&p)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list established sessions to adopt");
                return Vec::new();
            }
        };
        let now = BootInstant::now().0;
        let mut events = Vec::new();
        for c in conns {
            let (family, saddr, daddr) = match (c.remote.ip(), c.local.ip()) {
                (IpAddr::V4(r), IpAddr::V4(l)) => {
                    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
                    s[..4].copy_from_slice(&r.octets());
                    d[..4].copy_from_slice(&l.octets());
                    (jitgate_common::event::FAMILY_V4, s, d)
                }
                (IpAddr::V6(r), IpAddr::V6(l)) => {
                    // A v4-mapped socket sees v4 packets.
                    match (r.to_ipv4_mapped(), l.to_ipv4_mapped()) {
                        (Some(r4), Some(l4)) => {
                            let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
                            s[..4].copy_from_slice(&r4.octets());
                            d[..4].copy_from_slice(&l4.octets());
                            (jitgate_common::event::FAMILY_V4, s, d)
                        }
                        _ => (jitgate_common::event::FAMILY_V6, r.octets(), l.octets()),
                    }
                }
                _ => continue,
            };
            let key = FlowKey {
                family,
                proto: Protocol::Tcp.number(),
                sport: c.remote.port().to_be_bytes(),
                dport: c.local.port().to_be_bytes(),
                _pad: [0; 2],
                saddr,
                daddr,
            };
            let entry = FlowEntry {
                admitted_at_ns: now,
                last_seen_ns: now,
                // No grant: the session predates enforcement. It lives until idle.
                grant_expires_ns: u64::MAX,
                grant_id: [0; 16],
            };
            if self.dp.insert_flow(key, entry).is_ok() {
                let mut e = AuditEvent::new("session.adopted", "agent");
                e.source = Some(c.remote.to_string());
                e.protocol = Some("tcp".into());
                e.port = Some(c.local.port());
                e.reason = Some("established before enforcement".into());
                events.push(e);
            }
        }
        events
    }

    fn save_chan(&self) {
        if let Ok(s) = self.chan.lock()
            && let Err(e) = s.save(&self.cfg.state_dir)
        {
            tracing::error!(error = %e, "cannot record the channel state");
        }
    }

    /// Raises the replay high-water mark (persisted before the answer goes out).
    fn bump_seq(&self, seq: u64) {
        let changed = self.chan.lock().map(|mut s| {
            let c = seq > s.seq_high_water;
            if c {
                s.seq_high_water = seq;
            }
            c
        });
        if changed.unwrap_or(false) {
            self.save_chan();
        }
    }

    fn high_water(&self) -> u64 {
        self.chan
            .lock()
            .map(|s| s.seq_high_water)
            .unwrap_or(u64::MAX)
    }

    async fn controller_msg(
        &mut self,
        msg: jitgate_proto::ControllerMsg,
        out: mpsc::Sender<jitgate_proto::AgentMsg>,
    ) {
        use jitgate_proto::ControllerMsg as C;
        match msg {
            C::Grant(s) => self.controller_grant(s, out).await,
            C::Revoke(s) => self.controller_revoke(s, out).await,
            C::Policy(s) => self.controller_policy(s, out).await,
            C::Active { grant_ids, .. } => self.reconcile(grant_ids, out).await,
            C::Welcome { .. } | C::Ping { .. } | C::AuditAck { .. } => {}
        }
    }

    async fn reject_controller(&self, kind: &str, id: Option<uuid::Uuid>, reason: String) {
        tracing::warn!(kind, %reason, "controller message rejected");
        let mut e = AuditEvent::new(kind, "controller");
        e.grant_id = id.map(|i| i.to_string());
        e.reason = Some(reason);
        self.write(WriteJob::audit(vec![e], true)).await;
    }

    /// Verifies a signed body from the controller. On failure nothing in it is believed,
    /// not even its ids: the rejection is audited as `kind` and answered with `reply`.
    async fn verified<T: jitgate_proto::signed::Body>(
        &self,
        s: &jitgate_proto::Signed<T>,
        kind: &str,
        out: &mpsc::Sender<jitgate_proto::AgentMsg>,
        reply: impl FnOnce(jitgate_proto::message::Outcome) -> jitgate_proto::AgentMsg,
    ) -> Option<T> {
        let enr = self.enrollment.as_ref()?;
        match s.verify(&enr.signing_key, enr.agent_id) {
            Ok(b) => Some(b),
            Err(e) => {
                self.reject_controller(kind, None, e.to_string()).await;
                let reason = e.to_string();
                let _ = out
                    .send(reply(jitgate_proto::message::Outcome::Rejected { reason }))
                    .await;
                None
            }
        }
    }

    async fn controller_grant(
        &mut self,
        s: jitgate_proto::Signed<jitgate_proto::GrantBody>,
        out: mpsc::Sender<jitgate_proto::AgentMsg>,
    ) {
        use jitgate_proto::message::{AgentMsg, Outcome};
        let Some(body) = self
            .verified(&s, "grant.rejected", &out, |outcome| {
                AgentMsg::GrantResult {
                    grant_id: uuid::Uuid::nil(),
                    seq: 0,
                    outcome,
                }
            })
            .await
        else {
            return;
        };
        let gid = GrantId::from_bytes(*body.grant_id.as_bytes());
        let (bid, bseq) = (body.grant_id, body.seq);
        let reply = move |outcome| AgentMsg::GrantResult {
            grant_id: bid,
            seq: bseq,
            outcome,
        };
        if self.table.contains_key(&gid) {
            // A redelivery: acknowledged again, not applied again.
            let _ = out.send(reply(Outcome::AlreadyApplied)).await;
            return;
        }
        let now = OffsetDateTime::now_utc();
        let end =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(body.end_unix_ms) * 1_000_000)
                .ok();
        let problem = if body.seq <= self.high_water() {
            Some(format!(
                "replay: seq {} is not above the high-water mark {}",
                body.seq,
                self.high_water()
            ))
        } else {
            match end {
                None => Some("end time out of range".to_string()),
                Some(e) if e <= now => Some(format!("the end time {e} has passed")),
                Some(e) if (e - now) > self.cfg.max_grant + time::Duration::seconds(5) => {
                    Some(format!(
                        "longer than this host's maximum grant of {}",
                        humantime::format_duration(self.cfg.max_grant)
                    ))
                }
                Some(_) => None,
            }
        };
        if let Some(reason) = problem {
            self.bump_seq(body.seq);
            self.reject_controller("grant.rejected", Some(body.grant_id), reason.clone())
                .await;
            let _ = out.send(reply(Outcome::Rejected { reason })).await;
            return;
        }
        let end = end.unwrap_or(now);
        // The earlier of the wall-clock end and receipt + the time left the controller counted.
        let by_wall = BootInstant::from_utc(end.into());
        let by_boot = BootInstant::now().saturating_add(Duration::from_millis(body.remaining_ms));
        let expires = by_wall.min(by_boot);
        let start =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(body.start_unix_ms) * 1_000_000)
                .unwrap_or(now);
        let requester: Arc<str> = Arc::from(body.requester.as_str());
        let g = GrantRecord {
            id: gid,
            protocol: body.protocol,
            port: body.port,
            source: body.source,
            start,
            end,
            requester: requester.clone(),
            justification: body.justification.clone().into(),
            origin: Origin::Controller,
            boot_id: self.boot_id.clone(),
            expires_boot_ns: expires.0,
        };
        if let Err(e) = self.dp.add_grant(g.id, g.spec(), expires) {
            let _ = out
                .send(reply(Outcome::Rejected {
                    reason: format!("cannot apply: {e}"),
                }))
                .await;
            return;
        }
        self.deadlines.insert((g.expires_boot_ns, g.id));
        self.table.insert(g.id, g.clone());
        self.bump_seq(body.seq);
        let actor = format!("controller:{}", body.requester);
        let (tx, rx) = oneshot::channel();
        self.write(WriteJob {
            journal: vec![Record::Grant(g.clone())],
            audit: vec![grant_event(
                "grant.applied",
                &actor,
                &g,
                Some(&format!("request {}", body.request_id)),
            )],
            durable: true,
            compact: None,
            done: Some(tx),
        })
        .await;
        let me = self.me.clone();
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(())) => {
                    let agent_unix_ms = unix_ms(OffsetDateTime::now_utc());
                    let _ = out.send(reply(Outcome::Applied { agent_unix_ms })).await;
                }
                _ => {
                    let _ = me.send(Msg::Rollback(vec![g.id])).await;
                    let _ = out
                        .send(reply(Outcome::Rejected {
                            reason: "not durable on the agent".into(),
                        }))
                        .await;
                }
            }
        });
    }

    async fn controller_revoke(
        &mut self,
        s: jitgate_proto::Signed<jitgate_proto::RevokeBody>,
        out: mpsc::Sender<jitgate_proto::AgentMsg>,
    ) {
        use jitgate_proto::message::{AgentMsg, Outcome};
        let Some(body) = self
            .verified(&s, "revoke.rejected", &out, |outcome| {
                AgentMsg::RevokeResult {
                    grant_id: uuid::Uuid::nil(),
                    seq: 0,
                    outcome,
                }
            })
            .await
        else {
            return;
        };
        let (bid, bseq) = (body.grant_id, body.seq);
        let reply = move |outcome| AgentMsg::RevokeResult {
            grant_id: bid,
            seq: bseq,
            outcome,
        };
        let gid = GrantId::from_bytes(*body.grant_id.as_bytes());
        let Some(g) = self.table.get(&gid).cloned() else {
            // Already gone (ended, or revoked before): nothing to do, say so again.
            self.bump_seq(body.seq);
            let _ = out.send(reply(Outcome::AlreadyApplied)).await;
            return;
        };
        if g.origin != Origin::Controller {
            let reason = "local grants are revoked locally, not by the controller".to_string();
            self.reject_controller("revoke.rejected", Some(body.grant_id), reason.clone())
                .await;
            let _ = out.send(reply(Outcome::Rejected { reason })).await;
            return;
        }
        if body.seq <= self.high_water() {
            let reason = format!("replay: seq {} is not above the high-water mark", body.seq);
            self.reject_controller("revoke.rejected", Some(body.grant_id), reason.clone())
                .await;
            let _ = out.send(reply(Outcome::Rejected { reason })).await;
            return;
        }
        self.forget(&g);
        let cut = self.cut_flows(&g);
        self.bump_seq(body.seq);
        self.removed_since_compact += 1;
        let mut ev = grant_event("grant.revoked", "controller", &g, Some(&body.reason));
        if cut > 0 {
            ev.reason = Some(format!("{}; {cut} session(s) closed", body.reason));
        }
        let (tx, rx) = oneshot::channel();
        self.write(WriteJob {
            journal: vec![Record::Remove {
                id: gid,
                reason: RemoveReason::Revoked,
            }],
            audit: vec![ev],
            durable: true,
            compact: None,
            done: Some(tx),
        })
        .await;
        tokio::spawn(async move {
            let outcome = match rx.await {
                Ok(Ok(())) => Outcome::Applied {
                    agent_unix_ms: unix_ms(OffsetDateTime::now_utc()),
                },
                _ => Outcome::Rejected {
                    reason: "not durable on the agent".into(),
                },
            };
            let _ = out.send(reply(outcome)).await;
        });
    }

    async fn controller_policy(
        &mut self,
        s: jitgate_proto::Signed<jitgate_proto::PolicyBody>,
        out: mpsc::Sender<jitgate_proto::AgentMsg>,
    ) {
        use jitgate_proto::message::{AgentMsg, Outcome};
        let Some(body) = self
            .verified(&s, "policy.rejected", &out, |outcome| {
                AgentMsg::PolicyResult { seq: 0, outcome }
            })
            .await
        else {
            return;
        };
        if body.seq == 0 {
            // Version 0: the VM has no JIT policy on the controller. The local configuration
            // stays the protected set; an empty list here must not open anything.
            let _ = out
                .send(AgentMsg::PolicyResult {
                    seq: 0,
                    outcome: Outcome::AlreadyApplied,
                })
                .await;
            return;
        }
        let current = self.chan.lock().map(|c| c.policy_seq).unwrap_or(u64::MAX);
        if body.seq < current {
            let reason = format!(
                "policy version {} is older than the applied {current}",
                body.seq
            );
            self.reject_controller("policy.rejected", None, reason.clone())
                .await;
            let _ = out
                .send(AgentMsg::PolicyResult {
                    seq: body.seq,
                    outcome: Outcome::Rejected { reason },
                })
                .await;
            return;
        }
        let mut ports = body.ports.clone();
        ports.sort();
        ports.dedup();
        if body.seq == current && ports == self.cfg.protected {
            let _ = out
                .send(AgentMsg::PolicyResult {
                    seq: body.seq,
                    outcome: Outcome::AlreadyApplied,
                })
                .await;
            return;
        }
        if let Err(e) = self.dp.set_protected(&ports) {
            let _ = out
                .send(AgentMsg::PolicyResult {
                    seq: body.seq,
                    outcome: Outcome::Rejected {
                        reason: e.to_string(),
                    },
                })
                .await;
            return;
        }
        let before = std::mem::replace(&mut self.cfg.protected, ports);
        // Kept so that a restart while the controller is unreachable keeps this policy.
        let path = self.cfg.state_dir.join(POLICY_FILE);
        if let Ok(bytes) = serde_json::to_vec(&s)
            && let Err(e) = std::fs::write(&path, bytes)
        {
            tracing::error!(error = %e, "cannot store the signed policy");
        }
        if let Ok(mut c) = self.chan.lock() {
            c.policy_seq = body.seq;
        }
        self.save_chan();
        let mut events = self.adopt_sessions();
        let mut e = AuditEvent::new("policy.applied", "controller");
        e.reason = Some(format!(
            "version {}: protected {} (was {})",
            body.seq,
            self.cfg
                .protected
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            before
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        events.insert(0, e);
        self.write(WriteJob::audit(events, true)).await;
        let _ = out
            .send(AgentMsg::PolicyResult {
                seq: body.seq,
                outcome: Outcome::Applied {
                    agent_unix_ms: unix_ms(OffsetDateTime::now_utc()),
                },
            })
            .await;
        // The protected set changed: the controller's view (and compliance) follows at once.
        let _ = out.send(self.heartbeat()).await;
    }

    /// After a (re)connect: controller grants the controller no longer lists were revoked or
    /// superseded while we were away; remove them. Then report everything held.
    async fn reconcile(
        &mut self,
        active: Vec<uuid::Uuid>,
        out: mpsc::Sender<jitgate_proto::AgentMsg>,
    ) {
        let keep: BTreeSet<GrantId> = active
            .iter()
            .map(|u| GrantId::from_bytes(*u.as_bytes()))
            .collect();
        let gone: Vec<GrantRecord> = self
            .table
            .values()
            .filter(|g| g.origin == Origin::Controller && !keep.contains(&g.id))
            .cloned()
            .collect();
        let mut journal = Vec::new();
        let mut events = Vec::new();
        for g in gone {
            self.forget(&g);
            let cut = self.cut_flows(&g);
            journal.push(Record::Remove {
                id: g.id,
                reason: RemoveReason::Reconciled,
            });
            events.push(grant_event(
                "grant.revoked",
                "controller",
                &g,
                Some(&format!(
                    "reconciled: no longer active on the controller; {cut} session(s) closed"
                )),
            ));
        }
        if !events.is_empty() {
            self.write(WriteJob {
                journal,
                audit: events,
                durable: true,
                compact: None,
                done: None,
            })
            .await;
        }
        let grants = self
            .table
            .values()
            .map(|g| jitgate_proto::message::ReportedGrant {
                grant_id: uuid::Uuid::from_bytes(g.id.to_bytes()),
                origin: g.origin.as_str().into(),
                protocol: g.protocol,
                port: g.port,
                source: g.source,
                end_unix_ms: unix_ms(g.end),
                requester: g.requester.to_string(),
            })
            .collect();
        let _ = out.send(jitgate_proto::AgentMsg::Grants { grants }).await;
    }

    /// The heartbeat with the state of enforcement (docs/protocol.md).
    fn heartbeat(&mut self) -> jitgate_proto::AgentMsg {
        let mut listening: Vec<(Protocol, String)> = Vec::new();
        for (proto, socks) in [
            (Protocol::Tcp, sockdiag::listening(|_| true)),
            (Protocol::Udp, sockdiag::listening_udp(|_| true)),
        ] {
            match socks {
                Ok(v) => listening.extend(v.into_iter().map(|a| (proto, a.to_string()))),
                Err(e) => {
                    tracing::warn!(protocol = %proto, error = %e, "cannot list listening sockets")
                }
            }
        }
        listening.sort();
        listening.dedup();
        listening.truncate(MAX_REPORTED_SOCKETS);
        let (audit_head, audit_seq) = self.head.lock().map(|h| h.clone()).unwrap_or_default();
        let problems = self.dp.health(self.attached.keys().map(String::as_str));
        jitgate_proto::AgentMsg::Status(Box::new(jitgate_proto::message::StatusReport {
            heartbeat: jitgate_proto::message::Heartbeat {
                interfaces: self
                    .attached
                    .iter()
                    .map(|(n, a)| (n.clone(), a.mode.as_str().to_string()))
                    .collect(),
                protected: self.cfg.protected.clone(),
                listening,
                active_grants: self.table.len() as u32,
                audit_head,
                audit_seq,
            },
            addresses: interface_addresses(),
            problems,
            agent_unix_ms: unix_ms(OffsetDateTime::now_utc()),
        }))
    }

    fn status(&mut self) -> Response {
        let counters = match self.dp.counters() {
            Ok(c) => Counter::ALL
                .iter()
                .map(|k| (k.name().to_string(), c.get(*k)))
                .collect(),
            Err(e) => return Response::error(ErrorCode::Internal, e.to_string()),
        };
        let program_id = self.dp.program_id().unwrap_or(0);
        let (audit_head, audit_seq) = self.head.lock().map(|h| h.clone()).unwrap_or_default();
        Response::Status(Box::new(Status {
            program_id,
            pin_dir: self.cfg.pin_dir.display().to_string(),
            interfaces: self
                .attached
                .iter()
                .map(|(n, a)| InterfaceStatus {
                    name: n.clone(),
                    mode: a.mode.as_str().into(),
                    link: a.link.as_str().into(),
                })
                .collect(),
            protected: self.cfg.protected.iter().map(|p| p.to_string()).collect(),
            counters,
            active_grants: self.table.len(),
            flows: self.dp.flows().len(),
            audit_head,
            audit_seq,
            started: self.started,
        }))
    }

    fn metrics(&self) -> String {
        let mut s = String::new();
        if let Ok(c) = self.dp.counters() {
            s.push_str("# HELP jitgate_packets_total Packets by verdict and reason.\n# TYPE jitgate_packets_total counter\n");
            for k in Counter::ALL
                .iter()
                .filter(|k| (**k as u32) < Counter::EventsSent as u32)
            {
                s.push_str(&format!(
                    "jitgate_packets_total{{reason=\"{}\"}} {}\n",
                    k.name(),
                    c.get(*k)
                ));
            }
            s.push_str("# HELP jitgate_events_total Data-plane events by outcome.\n# TYPE jitgate_events_total counter\n");
            for (k, label) in [
                (Counter::EventsSent, "sent"),
                (Counter::EventsSuppressed, "suppressed"),
                (Counter::EventsLost, "dropped"),
            ] {
                s.push_str(&format!(
                    "jitgate_events_total{{outcome=\"{label}\"}} {}\n",
                    c.get(k)
                ));
            }
        }
        s.push_str(&format!(
            "# HELP jitgate_active_grants Grants in the table.\n# TYPE jitgate_active_grants gauge\njitgate_active_grants {}\n",
            self.table.len()
        ));
        s.push_str(&format!(
            "# HELP jitgate_flows Admitted flows tracked by the kernel.\n# TYPE jitgate_flows gauge\njitgate_flows {}\n",
            self.dp.flows().len()
        ));
        s
    }

    async fn detach(&mut self, actor: &str, reply: oneshot::Sender<Response>) {
        let result = crate::remove_pins(&self.cfg.pin_dir);
        let mut e = AuditEvent::new("agent.detached", actor);
        e.reason = Some(match &result {
            Ok(()) => "enforcement removed from every interface".into(),
            Err(err) => format!("detach failed: {err}"),
        });
        let (tx, rx) = oneshot::channel();
        self.write(WriteJob {
            journal: vec![],
            audit: vec![e],
            durable: true,
            compact: None,
            done: Some(tx),
        })
        .await;
        let _ = rx.await;
        self.detached = result.is_ok();
        let _ = reply.send(match result {
            Ok(()) => Response::Detached,
            Err(err) => Response::error(ErrorCode::Internal, err.to_string()),
        });
    }
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn event_to_audit(e: &DataplaneEvent) -> AuditEvent {
    let kind = match e.kind {
        EventKind::Admitted => "connection.admitted",
        EventKind::Denied => "connection.denied",
    };
    AuditEvent {
        kind: kind.into(),
        actor: "kernel".into(),
        source: Some(SocketAddr::new(e.source, e.source_port).to_string()),
        protocol: Some(e.protocol.to_string()),
        port: Some(e.destination_port),
        window: None,
        grant_id: e.grant.map(|g| g.to_string()),
        reason: e.reason.map(|r| r.name().to_string()),
        time: Some(e.at.to_utc().into()),
    }
}

/// Who is on the other end of the admin socket. Only root is served.
fn peer_actor(s: &UnixStream) -> Result<String, String> {
    let cred = s
        .peer_cred()
        .map_err(|e| format!("peer credentials: {e}"))?;
    if cred.uid() != 0 {
        return Err(format!("uid {} is not root", cred.uid()));
    }
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid()))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid{}", cred.uid()));
    Ok(match cred.pid() {
        Some(pid) => format!("local:{name} (pid {pid})"),
        None => format!("local:{name}"),
    })
}

async fn serve_conn(
    stream: UnixStream,
    core: mpsc::Sender<Msg>,
    state_dir: PathBuf,
    lines: broadcast::Sender<AuditLine>,
) {
    let actor = peer_actor(&stream);
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let too_long = match read_line_bounded(&mut reader, &mut raw, admin::MAX_REQUEST).await {
            Ok(None) | Err(_) => return,
            Ok(Some(fits)) => !fits,
        };
        let line = String::from_utf8_lossy(&raw).into_owned();
        let send = |resp: Response| {
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            out
        };
        let actor = match &actor {
            Ok(a) => a.clone(),
            Err(e) => {
                let _ = w
                    .write_all(&send(Response::error(ErrorCode::Unauthorized, e.clone())))
                    .await;
                return;
            }
        };
        if too_long {
            let _ = w
                .write_all(&send(Response::error(
                    ErrorCode::Invalid,
                    "request too long",
                )))
                .await;
            return;
        }
        let req: Request = match serde_json::from_str(line.trim_end()) {
            Ok(r) => r,
            Err(e) => {
                let _ = w
                    .write_all(&send(Response::error(
                        ErrorCode::Invalid,
                        format!("bad request: {e}"),
                    )))
                    .await;
                continue;
            }
        };
        match req {
            Request::Audit { follow, tail } => {
                // Subscribe before reading the files so that nothing falls in between.
                let mut live = lines.subscribe();
                let dir = state_dir.clone();
                let existing = tokio::task::spawn_blocking(move || audit::read_all(&dir)).await;
                let mut last_seq = 0;
                if let Ok(Ok(all)) = existing {
                    let ok: Vec<AuditLine> = all.into_iter().filter_map(Result::ok).collect();
                    let skip = tail.map(|t| ok.len().saturating_sub(t)).unwrap_or(0);
                    for l in ok.into_iter().skip(skip) {
                        last_seq = l.body.seq;
                        if w.write_all(&send(Response::Audit { line: Box::new(l) }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                if !follow {
                    let _ = w.write_all(&send(Response::AuditEnd)).await;
                    continue;
                }
                loop {
                    match live.recv().await {
                        Ok(l) if l.body.seq > last_seq => {
                            if w.write_all(&send(Response::Audit { line: Box::new(l) }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
            Request::AuditVerify => {
                let dir = state_dir.clone();
                let resp = match tokio::task::spawn_blocking(move || audit::verify_state_dir(&dir))
                    .await
                {
                    Ok(Ok(v)) => Response::Verified(v),
                    Ok(Err(e)) => Response::error(ErrorCode::Tampered, e.to_string()),
                    Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
                };
                if w.write_all(&send(resp)).await.is_err() {
                    return;
                }
            }
            req => {
                let (tx, rx) = oneshot::channel();
                if core
                    .send(Msg::Admin {
                        req,
                        actor,
                        reply: tx,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let resp = rx.await.unwrap_or_else(|_| {
                    Response::error(ErrorCode::Internal, "the agent is stopping")
                });
                if w.write_all(&send(resp)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one line of at most `max` bytes without ever buffering more: `Some(true)` a line,
/// `Some(false)` a line that was too long (its rest is not read), `None` end of stream.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if out.is_empty() { None } else { Some(true) });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if out.len() + take > max + 1 {
            return Ok(Some(false));
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(Some(true));
        }
    }
}

/// At most this many listening sockets go into one status report (frames stay small).
const MAX_REPORTED_SOCKETS: usize = 1024;

/// Every address of every non-loopback interface, as (interface, address).
fn interface_addresses() -> Vec<(String, String)> {
    let mut out = Vec::new();
    match nix::ifaddrs::getifaddrs() {
        Ok(it) => {
            for a in it {
                if a.flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
                {
                    continue;
                }
                let Some(addr) = a.address else { continue };
                let ip: Option<IpAddr> = if let Some(v4) = addr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                };
                if let Some(ip) = ip {
                    out.push((a.interface_name.clone(), ip.to_string()));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list interface addresses"),
    }
    out.sort();
    out.dedup();
    out
}

/// Watches the kernel's link announcements and asks the core to rescan interfaces.
fn watch_links(rescan: Arc<tokio::sync::Notify>) {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        tracing::warn!("cannot watch interfaces (netlink): new interfaces need a restart");
        return;
    }
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: valid address for the call.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        tracing::warn!("cannot subscribe to link events: new interfaces need a restart");
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        return;
    }
    let mut buf = vec![0u8; 16384];
    loop {
        // SAFETY: buf is valid for writes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
        rescan.notify_one();
    }
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
}

async fn serve_metrics(addr: SocketAddr, core: mpsc::Sender<Msg>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics");
            return;
        }
    };
    tracing::info!(%addr, "metrics endpoint");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read(&mut s, &mut buf),
            )
            .await;
            let (tx, rx) = oneshot::channel();
            if core.send(Msg::Metrics(tx)).await.is_err() {
                return;
            }
            let body = rx.await.unwrap_or_default();
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
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
    // Once enrolled, the agent signs its chain head with its enrolment key.
    match crate::enroll::Enrollment::load(&cfg.state_dir).map(|e| e.map(|e| e.audit_signer())) {
        Ok(Some(Ok(s))) => log.set_signer(s),
        Ok(Some(Err(e))) | Err(e) => {
            tracing::error!(error = %e, "audit checkpoints disabled: no enrolment key")
        }
        Ok(None) => {}
    }
    let head: Head = Arc::new(Mutex::new({
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
    let writer = {
        let lines = lines_tx.clone();
        let head = head.clone();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer_thread(journal, log, wrx, lines, head))
            .map_err(io("starting the journal writer"))?
    };
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let bid = boot_id();
    let mut core = Core {
        cfg: cfg.clone(),
        dp,
        table: HashMap::new(),
        deadlines: BTreeSet::new(),
        writer: wtx.clone(),
        me: tx.clone(),
        boot_id: bid.clone(),
        requesters: HashMap::new(),
        attached: BTreeMap::new(),
        refused: BTreeSet::new(),
        started: OffsetDateTime::now_utc(),
        head: head.clone(),
        removed_since_compact: 0,
        detached: false,
        enrollment: None,
        chan: Arc::new(Mutex::new(crate::channel::ChannelState::load(
            &cfg.state_dir,
        ))),
    };
    match crate::enroll::Enrollment::load(&cfg.state_dir) {
        Ok(Some(e)) => {
            // The controller's last signed policy, if any, sets the protected set; the local
            // config is the baseline before the first one arrives.
            if let Ok(text) = std::fs::read(cfg.state_dir.join(POLICY_FILE))
                && let Ok(signed) = serde_json::from_slice::<
                    jitgate_proto::Signed<jitgate_proto::PolicyBody>,
                >(&text)
            {
                match signed.verify(&e.signing_key, e.agent_id) {
                    Ok(p) => {
                        let mut ports = p.ports;
                        ports.sort();
                        ports.dedup();
                        core.dp.set_protected(&ports)?;
                        core.cfg.protected = ports;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "stored policy does not verify; using the local config")
                    }
                }
            }
            tracing::info!(agent = %e.agent_id, vm = %e.vm, endpoint = %e.endpoint, "enrolled");
            core.enrollment = Some(e);
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "enrolment unreadable; running without a controller"),
    }

    // Restore from the journal: every grant still running, none resurrected after its end.
    let now = BootInstant::now();
    let mut journal_fix = Vec::new();
    let mut startup_events = Vec::new();
    let mut live = Vec::new();
    for (id, mut g) in replay.grants {
        let exp = g.expires(&bid);
        if exp <= now {
            journal_fix.push(Record::Remove {
                id,
                reason: RemoveReason::Expired,
            });
            startup_events.push(grant_event(
                "grant.expired",
                "agent",
                &g,
                Some("Expired while the agent was down"),
            ));
            continue;
        }
        if g.boot_id != bid {
            // A reboot: pin the end to this boot's clock from now on.
            g.boot_id = bid.clone();
            g.expires_boot_ns = exp.0;
            journal_fix.push(Record::Grant(g.clone()));
        }
        live.push(g);
    }
    core.dp.reconcile_grants(
        live.iter()
            .map(|g| (g.id, g.spec(), BootInstant(g.expires_boot_ns))),
    )?;
    for g in live {
        core.deadlines.insert((g.expires_boot_ns, g.id));
        core.table.insert(g.id, g);
    }
    startup_events.extend(core.adopt_sessions());
    let mut started = AuditEvent::new("agent.started", "agent");
    started.reason = Some(format!(
        "{} active grant(s) restored; {}; protected: {}",
        core.table.len(),
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
    let (done_tx, done_rx) = oneshot::channel();
    core.write(WriteJob {
        journal: journal_fix,
        audit: startup_events,
        durable: true,
        compact: None,
        done: Some(done_tx),
    })
    .await;
    let _ = done_rx.await;
    core.rescan().await;

    // Signed checkpoints of the audit chain head (skipped by the log while it has not moved).
    let cp_writer = wtx.clone();
    let cp_every = cfg.audit_checkpoint_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cp_every, cp_every);
        loop {
            tick.tick().await;
            let ev = AuditEvent::new(audit::CHECKPOINT, "agent");
            if cp_writer
                .send(WriteJob::audit(vec![ev], true))
                .await
                .is_err()
            {
                return;
            }
        }
    });

    // Data-plane events into the audit log.
    let mut events = core.dp.take_events()?;
    let ev_writer = wtx.clone();
    tokio::spawn(async move {
        while let Ok(batch) = events.next_batch().await {
            let evs: Vec<AuditEvent> = batch.iter().map(event_to_audit).collect();
            if ev_writer.send(WriteJob::audit(evs, false)).await.is_err() {
                return;
            }
        }
    });

    // The admin socket: root only.
    if let Some(parent) = cfg.socket.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let listener =
        UnixListener::bind(&cfg.socket).map_err(io(format!("binding {}", cfg.socket.display())))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting the admin socket"))?;
    {
        let core_tx = tx.clone();
        let state_dir = cfg.state_dir.clone();
        let lines = lines_tx.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(serve_conn(
                        s,
                        core_tx.clone(),
                        state_dir.clone(),
                        lines.clone(),
                    ));
                }
            }
        });
    }
    let rescan = Arc::new(tokio::sync::Notify::new());
    {
        let r = rescan.clone();
        std::thread::Builder::new()
            .name("link-watch".into())
            .spawn(move || watch_links(r))
            .map_err(io("starting the interface watcher"))?;
    }
    if let Some(addr) = cfg.metrics {
        tokio::spawn(serve_metrics(addr, tx.clone()));
    }
    let (chan_tx, mut chan_rx) = mpsc::channel::<crate::channel::ChannelRequest>(1024);
    if let Some(e) = core.enrollment.clone() {
        tokio::spawn(
            crate::channel::Channel {
                enrollment: e,
                state: core.chan.clone(),
                state_dir: cfg.state_dir.clone(),
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
        grants = core.table.len(),
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
                    core.handle_admin(req, actor, reply).await;
                    if core.detached {
                        break;
                    }
                }

                Some(Msg::Metrics(reply)) => {
                    let _ = reply.send(core.metrics());
                }
                Some(Msg::Rollback(ids)) => {
                    for id in ids {
                        if let Some(g) = core.table.get(&id).cloned() {
                            core.forget(&g);
                        }
                    }
                }
                None => break,
            },
            Some(req) = chan_rx.recv() => match req {
                crate::channel::ChannelRequest::Handle(m, out) => core.controller_msg(m, out).await,
                crate::channel::ChannelRequest::Heartbeat(reply) => {
                    let _ = reply.send(core.heartbeat());
                }
            },
            // A burst of link messages coalesces into one rescan (Notify keeps one permit).
            _ = rescan.notified() => core.rescan().await,
            _ = tokio::time::sleep(wake) => core.expire_due().await,
            _ = sweep.tick() => core.sweep().await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let mut stop = AuditEvent::new("agent.stopped", "agent");
    stop.reason = Some(if core.detached {
        "after detach".into()
    } else {
        "signal; enforcement stays pinned".into()
    });
    let (done_tx, done_rx) = oneshot::channel();
    core.write(WriteJob {
        journal: vec![],
        audit: vec![stop, AuditEvent::new(audit::CHECKPOINT, "agent")],
        durable: true,
        compact: None,
        done: Some(done_tx),
    })
    .await;
    let _ = done_rx.await;
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

/// Detaches without a running agent: removes every pin and records it in the audit log.
pub fn detach_offline(
    pin_dir: &std::path::Path,
    state_dir: &std::path::Path,
    actor: &str,
) -> Result<(), DaemonError> {
    crate::remove_pins(pin_dir)?;
    let mut log =
        AuditLog::open(state_dir, AUDIT_ROTATE_BYTES).map_err(io("opening the audit log"))?;
    let mut e = AuditEvent::new("agent.detached", actor);
    e.reason = Some(format!("offline detach of {}", pin_dir.display()));
    log.append([e]).map_err(io("writing the audit log"))?;
    log.sync().map_err(io("syncing the audit log"))?;
    Ok(())
}

/// Parses a grant port argument: `22`, `22/tcp`, `22/udp`, `22/*`.
pub fn parse_port_arg(s: &str) -> Result<(jitgate_common::Port, String), String> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.to_string()),
        None => (s, "tcp".to_string()),
    };
    let port: jitgate_common::Port = port
        .parse()
        .map_err(|e: jitgate_common::ParseError| format!("--port {s:?}: {e}"))?;
    proto
        .parse::<ProtoSpec>()
        .map_err(|e| format!("--port {s:?}: {e}"))?;
    Ok((port, proto))
}

/// Parses a source prefix argument with a message that names the flag.
pub fn parse_source_arg(s: &str) -> Result<SourcePrefix, String> {
    s.parse()
        .map_err(|e: jitgate_common::ParseError| format!("--source {s:?}: {e}"))
}
