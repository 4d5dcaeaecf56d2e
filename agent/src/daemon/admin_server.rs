//! The admin socket, the local break-glass path: who may connect (root only), the line
//! protocol of `crate::admin`, and carrying out each request on the core. Audit reads and
//! verification are answered by the connection itself, from the files.

use super::core::{Core, Msg, grant_event};
use super::writer::WriteJob;
use crate::admin::{
    self, BookedGrant, ErrorCode, GrantRequest, InterfaceStatus, Request, Response, Status,
};
use crate::audit::{self, AuditEvent, AuditLine};
use crate::clock::BootInstant;
use crate::config::ProtoSpec;
use crate::grant::{GrantId, GrantRecord, Origin};
use crate::journal::{Record, RemoveReason};
use jitgate_common::{Counter, Protocol};
use jitgate_proto::AuditKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Binds the admin socket (mode 0600) and serves it until the process ends. A failure says
/// which step failed.
pub(super) fn listen(
    socket: &Path,
    core: mpsc::Sender<Msg>,
    state_dir: PathBuf,
    lines: broadcast::Sender<AuditLine>,
) -> Result<(), (String, std::io::Error)> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| (format!("creating {}", parent.display()), e))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).map_err(|e| (format!("binding {}", socket.display()), e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ("restricting the admin socket".to_string(), e))?;
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_conn(
                    s,
                    core.clone(),
                    state_dir.clone(),
                    lines.clone(),
                ));
            }
        }
    });
    Ok(())
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

/// A request from the admin socket, carried out on the core.
pub(super) async fn handle(
    core: &mut Core,
    req: Request,
    actor: String,
    reply: oneshot::Sender<Response>,
) {
    match req {
        Request::Grant(r) => grant(core, vec![r], actor, reply).await,
        Request::GrantBatch(rs) => grant(core, rs, actor, reply).await,
        Request::Revoke { id } => revoke(core, &id, &actor, reply).await,
        Request::Grants => {
            let mut grants: Vec<GrantRecord> = core.grants.iter().map(|g| g.record()).collect();
            grants.sort_by_key(|g| (g.end, g.id));
            let boot = core.grants.boot_id();
            let scheduled = core
                .schedule
                .iter()
                .map(|b| BookedGrant {
                    grant: b.grant.clone(),
                    opens: b.opens(boot).to_utc().into(),
                })
                .collect();
            let connections = grants
                .iter()
                .filter_map(|g| {
                    let limit = g.max_connections?;
                    let used = core.dp.conn_usage(&g.id)?;
                    Some(admin::ConnectionUse {
                        id: g.id,
                        admitted: used.admitted(),
                        limit,
                    })
                })
                .collect();
            let _ = reply.send(Response::Grants {
                grants,
                scheduled,
                connections,
            });
        }
        Request::Status => {
            let _ = reply.send(status(core));
        }
        Request::Detach => detach(core, &actor, reply).await,
        // Answered by the connection handler.
        Request::Audit { .. } | Request::AuditVerify => {
            let _ = reply.send(Response::error(ErrorCode::Internal, "misrouted request"));
        }
    }
}

fn validate(
    core: &Core,
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
    let max = core.cfg.max_grant;
    if d > max {
        return Err(format!(
            "{} is longer than this host's maximum grant of {}",
            humantime::format_duration(d),
            humantime::format_duration(max)
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

/// Applies local grants to the maps and the table, all or none; durability is the caller's
/// next step.
fn apply_local(
    core: &mut Core,
    reqs: &[GrantRequest],
    actor: &str,
) -> Result<Vec<GrantRecord>, Response> {
    let now = OffsetDateTime::now_utc();
    let mut plans = Vec::new();
    for r in reqs {
        // Validate everything first: a bad entry changes nothing.
        let (protos, d) =
            validate(core, r, now).map_err(|m| Response::error(ErrorCode::Invalid, m))?;
        plans.push((r, protos, d));
    }
    let boot_now = BootInstant::now();
    let name = actor.split(" (pid").next().unwrap_or(actor);
    let requester: Arc<str> = Arc::from(name);
    let mut out: Vec<GrantRecord> = Vec::new();
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
                boot_id: core.grants.boot_id().clone(),
                expires_boot_ns: boot_now.saturating_add(d).0,
                max_connections: r.max_connections,
            };
            if let Err(e) = core.apply(&g) {
                for done in &out {
                    core.forget(&done.id);
                }
                return Err(Response::error(ErrorCode::Internal, e));
            }
            out.push(g);
        }
    }
    Ok(out)
}

async fn grant(
    core: &mut Core,
    reqs: Vec<GrantRequest>,
    actor: String,
    reply: oneshot::Sender<Response>,
) {
    let grants = match apply_local(core, &reqs, &actor) {
        Ok(g) => g,
        Err(resp) => {
            let mut e = AuditEvent::new(AuditKind::GrantRejected, &actor);
            if let Response::Error { message, .. } = &resp {
                e.reason = Some(message.clone());
            }
            if let Some(r) = reqs.first() {
                e.source = Some(r.source.to_string());
                e.port = Some(r.port.get());
                e.protocol = Some(r.protocol.clone());
            }
            core.write(WriteJob::audit(vec![e], false)).await;
            let _ = reply.send(resp);
            return;
        }
    };
    let audit = grants
        .iter()
        .map(|g| {
            grant_event(
                AuditKind::GrantApplied,
                &actor,
                g,
                Some("local break-glass grant"),
            )
        })
        .collect();
    let (job, done) = WriteJob::durable(grants.iter().cloned().map(Record::Grant).collect(), audit);
    core.write(job).await;
    let me = core.me.clone();
    tokio::spawn(async move {
        match done.await {
            Ok(Ok(())) => {
                // The controller learns of it now (activity log, `access.break_glass`).
                let _ = me.send(Msg::ReportGrants).await;
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

async fn revoke(core: &mut Core, id: &str, actor: &str, reply: oneshot::Sender<Response>) {
    let Ok(gid) = id.parse::<GrantId>() else {
        let _ = reply.send(Response::error(
            ErrorCode::Invalid,
            format!("{id:?} is not a grant id"),
        ));
        return;
    };
    let Some((g, cut)) = core.withdraw(&[gid]).pop() else {
        let _ = reply.send(Response::error(
            ErrorCode::NotFound,
            format!("no active grant {gid}"),
        ));
        return;
    };
    let mut ev = grant_event(AuditKind::GrantRevoked, actor, &g, Some("UserRequested"));
    if cut > 0 {
        ev.reason = Some(format!("UserRequested; {cut} session(s) closed"));
    }
    let (job, done) = WriteJob::durable(
        vec![Record::Remove {
            id: gid,
            reason: RemoveReason::Revoked,
        }],
        vec![ev],
    );
    core.write(job).await;
    tokio::spawn(async move {
        let resp = match done.await {
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

fn status(core: &mut Core) -> Response {
    let counters = match core.dp.counters() {
        Ok(c) => Counter::ALL
            .iter()
            .map(|k| (k.name().to_string(), c.get(*k)))
            .collect(),
        Err(e) => return Response::error(ErrorCode::Internal, e.to_string()),
    };
    let program_id = core.dp.program_id().unwrap_or(0);
    let (audit_head, audit_seq) = core.head.lock().map(|h| h.clone()).unwrap_or_default();
    let attached: Vec<(String, crate::dataplane::AttachMode, crate::link::LinkLayer)> = core
        .interfaces
        .attached()
        .iter()
        .map(|(n, a)| (n.clone(), a.mode, a.link))
        .collect();
    let interfaces = attached
        .into_iter()
        .map(|(name, mode, link)| {
            let mut i = InterfaceStatus {
                name,
                mode: mode.as_str().into(),
                link: link.as_str().into(),
                hook: None,
                position: None,
                programs: None,
                ahead: Vec::new(),
                problem: None,
            };
            match core.dp.hook_status(&i.name) {
                Ok(st) => {
                    let wire = st.to_wire();
                    i.hook = Some(wire.hook);
                    i.position = Some(wire.position);
                    i.programs = Some(wire.programs);
                    i.problem = st.problem_words();
                    i.ahead = wire.ahead;
                }
                Err(e) => i.problem = Some(format!("{}: {e}", i.name)),
            }
            i
        })
        .collect();
    Response::Status(Box::new(Status {
        program_id,
        pin_dir: core.cfg.pin_dir.display().to_string(),
        interfaces,
        protected: core.cfg.protected.iter().map(|p| p.to_string()).collect(),
        counters,
        active_grants: core.grants.len(),
        flows: core.dp.flows().len(),
        audit_head,
        audit_seq,
        started: core.started,
        controller: core.controller.lock().ok().and_then(|c| c.clone()),
        enrolled: core.enrollment.is_some(),
        certificate_expires: core
            .enrollment
            .as_ref()
            .and_then(|e| e.cert_validity().ok())
            .and_then(|v| OffsetDateTime::from_unix_timestamp(v.not_after).ok()),
        certificate_problem: core.cert_problem.lock().ok().and_then(|c| c.clone()),
        closed_by_controller: core
            .closed_by_controller
            .lock()
            .ok()
            .and_then(|c| c.clone()),
    }))
}

async fn detach(core: &mut Core, actor: &str, reply: oneshot::Sender<Response>) {
    let result = crate::dataplane::remove_pins(&core.cfg.pin_dir);
    let mut e = AuditEvent::new(AuditKind::AgentDetached, actor);
    e.reason = Some(match &result {
        Ok(()) => "enforcement removed from every interface".into(),
        Err(err) => format!("detach failed: {err}"),
    });
    let (job, done) = WriteJob::durable(Vec::new(), vec![e]);
    core.write(job).await;
    let _ = done.await;
    core.detached = result.is_ok();
    let _ = reply.send(match result {
        Ok(()) => Response::Detached,
        Err(err) => Response::error(ErrorCode::Internal, err.to_string()),
    });
}
