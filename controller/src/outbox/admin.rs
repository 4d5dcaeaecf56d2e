//! Notification sinks as admins manage them through the API (`jit notify ...`): add, list,
//! remove, test, the queue per sink and its re-drive, and the write-only secrets sinks name.
//!
//! Everything `add` can check is checked before anything is stored: the definition
//! ([`Sink::from_spec`] with the configuration file's rules), the sink's scope against the
//! admin's (`authz`), the named secret (in the secrets directory, never a path), and the
//! URL's host resolved and checked against the egress rules (`Deliverer::check_target`).

use jitgate_api::{
    ActivityOutcome, ErrorCode, NewSink, Operation, ResourceType, SinkInfo, SinkStatus,
    SinkTestResult,
};
use jitgate_notify::deliver::TargetError;
use jitgate_notify::resolve::ResolveError;
use jitgate_notify::sink::{Scope as SinkScope, Target};
use jitgate_notify::{EventType, Outcome, SecretName, Sink, SinkSpec};
use sqlx::AnyConnection;

use crate::authz::{self, Action, Caller, SinkReach};
use crate::error::{Error, Result};
use crate::outbox::Outbox;
use crate::outbox::status;
use crate::store::activity::{self, NewActivity};
use crate::store::inventory;
use crate::store::notify::{self, CONFIG_SINK_OWNER, DeadRow, SinkRow};
use crate::store::write::WriteTx;

/// What the example event of `test` carries where people write text.
const TEST_TEXT: &str = "jitgate test notification";

/// The notification service of one controller; without an outbox (administration
/// commands) every call answers that notifications are unavailable.
#[derive(Clone, Default)]
pub struct Notifications {
    outbox: Option<Outbox>,
}

/// What becomes of dead deliveries.
#[derive(Clone, Copy, Debug)]
enum DeadAction {
    Retry,
    Discard,
}

/// A sink's scope with the VM's resource group looked up (what `authz` decides on).
enum Reach {
    Everything,
    Group(String),
    Vm { vm: String, group: String },
}

impl Reach {
    fn as_ref(&self) -> SinkReach<'_> {
        match self {
            Reach::Everything => SinkReach::Everything,
            Reach::Group(g) => SinkReach::Group(g),
            Reach::Vm { vm, group } => SinkReach::Vm { vm, group },
        }
    }
}

impl Notifications {
    pub fn new(outbox: Outbox) -> Notifications {
        Notifications {
            outbox: Some(outbox),
        }
    }

    fn outbox(&self) -> Result<&Outbox> {
        self.outbox
            .as_ref()
            .ok_or(Error::Unavailable("notifications"))
    }

    /// The sinks the caller may see (an admin: those within their scope).
    pub async fn list(&self, caller: &Caller) -> Result<Vec<SinkInfo>> {
        authz::authorize(caller, Action::ListSinks)?;
        let o = self.outbox()?;
        let mut conn = o.db.pool().acquire().await?;
        let mut out = Vec::new();
        for row in notify::sinks(&mut conn).await? {
            let sink = parse(&row, o)?;
            let reach = reach(&mut conn, sink.scope.as_ref(), false).await?;
            if authz::sees_sink(caller, reach.as_ref()) {
                out.push(info(&sink, &row));
            }
        }
        Ok(out)
    }

    /// Checks and stores a new sink; nothing is stored when any check fails.
    pub async fn add(&self, caller: &Caller, body: NewSink) -> Result<SinkInfo> {
        let sink = self.check(caller, body).await?;
        let o = self.outbox()?;
        let mut w = o.db.begin().await?;
        if notify::sink(w.conn(), &sink.name).await?.is_some() {
            return Err(Error::refused(
                ErrorCode::SinkExists,
                format!("a notification sink named {} exists", sink.name),
            ));
        }
        let row = store(&mut w, caller, &sink, Operation::AddSink).await?;
        w.commit().await?;
        Ok(info(&sink, &row))
    }

    /// Everything a new (or changed) sink must pass before it is stored: its definition,
    /// its scope within the caller's, its named secret, and its target (the URL's host
    /// resolved and checked against the egress rules).
    pub async fn check(&self, caller: &Caller, body: NewSink) -> Result<Sink> {
        authz::authorize(caller, Action::ListSinks)?;
        let o = self.outbox()?;
        let sink = Sink::from_spec(&SinkSpec::from(body), &o.rules)
            .map_err(|e| Error::refused(ErrorCode::InvalidSink, e.to_string()))?;
        {
            let mut conn = o.db.pool().acquire().await?;
            let reach = reach(&mut conn, sink.scope.as_ref(), true).await?;
            authz::authorize(
                caller,
                Action::ManageSink {
                    reach: reach.as_ref(),
                },
            )?;
        }
        sink.check_secret(&o.secrets)
            .map_err(|e| Error::refused(ErrorCode::InvalidSink, e.to_string()))?;
        let Some(deliverer) = &o.deliverer else {
            return Err(Error::refused(
                ErrorCode::NotificationsUnavailable,
                "this controller's host trusts no certificate authority, so it cannot send \
                 notifications: install the ca-certificates package or set notify.ca_file, \
                 then restart the controller",
            ));
        };
        match &sink.target {
            Target::Url(url) => {
                deliverer.check_target(url).await.map_err(target_refused)?;
            }
            Target::Email(_) if !deliverer.has_smtp() => {
                return Err(Error::refused(
                    ErrorCode::InvalidSink,
                    "email sinks need an SMTP relay: set [notify.smtp] in controller.toml",
                ));
            }
            Target::Email(_) => {}
        }
        Ok(sink)
    }

    /// A sink definition as it would be stored (checked, events and scope in canonical form).
    pub fn normalise(&self, spec: &SinkSpec) -> Result<SinkSpec> {
        let o = self.outbox()?;
        Ok(Sink::from_spec(spec, &o.rules)
            .map_err(|e| Error::refused(ErrorCode::InvalidSink, e.to_string()))?
            .to_spec())
    }

    /// The stored sinks the caller may see, as their definitions (targets included: for
    /// the controller's own comparisons, never for a response), config-file sinks left out.
    pub async fn specs(&self, caller: &Caller) -> Result<Vec<SinkSpec>> {
        if authz::authorize(caller, Action::ListSinks).is_err() {
            return Ok(Vec::new());
        }
        let Ok(o) = self.outbox() else {
            return Ok(Vec::new());
        };
        let mut conn = o.db.pool().acquire().await?;
        let mut out = Vec::new();
        for row in notify::sinks(&mut conn).await? {
            if row.created_by == CONFIG_SINK_OWNER {
                continue;
            }
            let sink = parse(&row, o)?;
            let reach = reach(&mut conn, sink.scope.as_ref(), false).await?;
            if authz::sees_sink(caller, reach.as_ref()) {
                out.push(sink.to_spec());
            }
        }
        Ok(out)
    }

    /// Removes a sink in `w` (one the caller may manage, not from controller.toml).
    pub async fn remove_in(&self, w: &mut WriteTx, caller: &Caller, name: &str) -> Result<()> {
        let (sink, row) = self.visible(w.conn(), caller, name).await?;
        if row.created_by == CONFIG_SINK_OWNER {
            return Err(Error::refused(
                ErrorCode::SinkInConfigFile,
                format!("the sink {name} comes from controller.toml: remove it there and restart"),
            ));
        }
        notify::remove_sink(w, name).await?;
        activity::log(w, entry(Operation::RemoveSink, caller, &sink)).await?;
        tracing::info!(sink = %name, by = %caller.principal_id(), "notification sink removed");
        Ok(())
    }

    /// Replaces a sink's definition in `w` (`sink` passed [`Notifications::check`]; the
    /// stored one must be the caller's to manage and not from controller.toml).
    pub async fn replace_in(&self, w: &mut WriteTx, caller: &Caller, sink: &Sink) -> Result<()> {
        let (_, row) = self.visible(w.conn(), caller, &sink.name).await?;
        if row.created_by == CONFIG_SINK_OWNER {
            return Err(Error::refused(
                ErrorCode::SinkInConfigFile,
                format!(
                    "the sink {} comes from controller.toml: change it there and restart",
                    sink.name
                ),
            ));
        }
        store(w, caller, sink, Operation::UpdateSink).await?;
        Ok(())
    }

    /// Removes a sink made through the API, with its queued deliveries.
    pub async fn remove(&self, caller: &Caller, name: &str) -> Result<()> {
        authz::authorize(caller, Action::ListSinks)?;
        let o = self.outbox()?;
        let mut w = o.db.begin().await?;
        self.remove_in(&mut w, caller, name).await?;
        w.commit().await
    }

    /// Sends an example event to the sink now (one attempt, outside the queue) and says how
    /// it went.
    pub async fn test(&self, caller: &Caller, name: &str) -> Result<SinkTestResult> {
        authz::authorize(caller, Action::ListSinks)?;
        let o = self.outbox()?;
        let sink = {
            let mut conn = o.db.pool().acquire().await?;
            self.visible(&mut conn, caller, name).await?.0
        };
        let Some(deliverer) = &o.deliverer else {
            return Err(Error::Unavailable(
                "notifications (no trusted certificate authority)",
            ));
        };
        let t = EventType::ALL
            .into_iter()
            .find(|t| sink.events.contains(*t))
            .unwrap_or(EventType::RequestPendingApproval);
        let event = jitgate_notify::examples::sample(
            t,
            TEST_TEXT,
            time::OffsetDateTime::now_utc(),
            o.portal.as_ref(),
        );
        let outcome = deliverer
            .deliver(&sink, &event, &o.secrets, &[], std::time::SystemTime::now())
            .await;
        Ok(match outcome {
            Outcome::Delivered { status } => SinkTestResult {
                sink: sink.name,
                event_type: t.as_str().into(),
                delivered: true,
                status_class: Some(status.as_str().into()),
                kind: "delivered".into(),
                detail: None,
            },
            Outcome::Failed(f) => SinkTestResult {
                sink: sink.name,
                event_type: t.as_str().into(),
                delivered: false,
                status_class: f.status.map(|s| s.as_str().into()),
                kind: f.kind.as_str().into(),
                detail: Some(f.detail.chars().take(200).collect()),
            },
        })
    }

    /// The queue of each sink the caller sees.
    pub async fn status(&self, caller: &Caller) -> Result<Vec<SinkStatus>> {
        let visible: Vec<String> = self
            .list(caller)
            .await?
            .into_iter()
            .map(|s| s.sink.name)
            .collect();
        let o = self.outbox()?;
        Ok(status::status(&o.db)
            .await?
            .into_iter()
            .filter(|s| visible.contains(&s.name))
            .collect())
    }

    /// One sink the caller may manage, as `list` shows it (target redacted); one outside
    /// their scope is "not found".
    pub async fn sink_info(&self, caller: &Caller, name: &str) -> Result<SinkInfo> {
        authz::authorize(caller, Action::ListSinks)?;
        let o = self.outbox()?;
        let mut conn = o.db.pool().acquire().await?;
        let (sink, row) = self.visible(&mut conn, caller, name).await?;
        Ok(info(&sink, &row))
    }

    /// The dead deliveries of `sink` (one the caller may manage, as for `retry` and
    /// `discard`), newest event first: at most `limit` (1 to 500) with an event seq below
    /// `before`.
    pub async fn dead_letters(
        &self,
        caller: &Caller,
        sink: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<DeadRow>> {
        authz::authorize(caller, Action::ListSinks)?;
        let o = self.outbox()?;
        let mut conn = o.db.pool().acquire().await?;
        let (s, _) = self.visible(&mut conn, caller, sink).await?;
        notify::dead(&mut conn, &s.name, before, limit.clamp(1, 500)).await
    }

    /// Dead deliveries of `sink` (or of every sink the caller sees) are attempted again.
    pub async fn retry(&self, caller: &Caller, sink: Option<&str>) -> Result<u64> {
        self.dead(caller, sink, DeadAction::Retry).await
    }

    /// Dead deliveries of `sink` (or of every sink the caller sees) are deleted: an admin
    /// gave up on them (delivered ones are pruned by age; dead ones stay until this).
    pub async fn discard(&self, caller: &Caller, sink: Option<&str>) -> Result<u64> {
        self.dead(caller, sink, DeadAction::Discard).await
    }

    async fn dead(&self, caller: &Caller, sink: Option<&str>, what: DeadAction) -> Result<u64> {
        authz::authorize(caller, Action::ListSinks)?;
        let o = self.outbox()?;
        let names: Vec<String> = match sink {
            Some(name) => {
                let mut conn = o.db.pool().acquire().await?;
                let (s, _) = self.visible(&mut conn, caller, name).await?;
                vec![s.name]
            }
            None => self
                .list(caller)
                .await?
                .into_iter()
                .map(|s| s.sink.name)
                .collect(),
        };
        let mut w = o.db.begin().await?;
        let mut n = 0;
        for name in &names {
            n += match what {
                DeadAction::Retry => notify::retry_dead(&mut w, Some(name)).await?,
                DeadAction::Discard => notify::discard_dead(&mut w, name).await?,
            };
        }
        if n > 0 {
            let op = match what {
                DeadAction::Retry => Operation::RetrySink,
                DeadAction::Discard => Operation::DiscardDead,
            };
            let a = NewActivity::other(op, ResourceType::NotificationSink, "", &caller.actor())
                .details(serde_json::json!({"sinks": names, "deliveries": n}));
            activity::log(&mut w, a).await?;
        }
        w.commit().await?;
        tracing::info!(deliveries = n, action = ?what, by = %caller.principal_id(), "dead notifications handled");
        Ok(n)
    }

    /// Writes (or replaces) a named secret. Only an admin of scope `*`: the names are shared
    /// by every sink.
    pub async fn put_secret(&self, caller: &Caller, name: &str, value: &str) -> Result<()> {
        authz::authorize(caller, Action::AdministerAll)?;
        let o = self.outbox()?;
        let name: SecretName =
            name.parse()
                .map_err(|e: jitgate_notify::secrets::SecretError| {
                    Error::refused(ErrorCode::InvalidSecret, e.to_string())
                })?;
        o.secrets
            .put(&name, value.as_bytes())
            .map_err(|e| match e {
                jitgate_notify::secrets::SecretError::BadSize => {
                    Error::refused(ErrorCode::InvalidSecret, e.to_string())
                }
                e => Error::Internal(e.to_string()),
            })?;
        let mut w = o.db.begin().await?;
        let a = NewActivity::other(
            Operation::WriteSecret,
            ResourceType::NotificationSecret,
            "",
            &caller.actor(),
        )
        .details(serde_json::json!({"secret": name.as_str()}));
        activity::log(&mut w, a).await?;
        w.commit().await?;
        tracing::info!(secret = %name, by = %caller.principal_id(), "notification secret written");
        Ok(())
    }

    /// The names of the secrets (never their values).
    pub async fn secret_names(&self, caller: &Caller) -> Result<Vec<String>> {
        authz::authorize(caller, Action::ListSinks)?;
        let o = self.outbox()?;
        Ok(o.secrets
            .names()
            .map_err(|e| Error::Internal(e.to_string()))?
            .into_iter()
            .map(|n| n.as_str().to_string())
            .collect())
    }

    /// A sink the caller may manage; one outside their scope is "not found" (its name is
    /// not theirs to learn), one they see but may not change is refused.
    async fn visible(
        &self,
        conn: &mut AnyConnection,
        caller: &Caller,
        name: &str,
    ) -> Result<(Sink, SinkRow)> {
        let o = self.outbox()?;
        let not_found = || {
            Error::refused(
                ErrorCode::SinkNotFound,
                format!("no notification sink {name}"),
            )
        };
        let row = notify::sink(conn, name).await?.ok_or_else(not_found)?;
        let sink = parse(&row, o)?;
        let reach = reach(conn, sink.scope.as_ref(), false).await?;
        if !authz::sees_sink(caller, reach.as_ref()) {
            return Err(not_found());
        }
        authz::authorize(
            caller,
            Action::ManageSink {
                reach: reach.as_ref(),
            },
        )?;
        Ok((sink, row))
    }
}

/// A stored sink, checked again with today's rules.
fn parse(row: &SinkRow, o: &Outbox) -> Result<Sink> {
    let spec: SinkSpec = serde_json::from_str(&row.spec)?;
    Sink::from_spec(&spec, &o.rules).map_err(|e| Error::corrupt(format!("sink {}: {e}", row.name)))
}

/// Where a scope reaches. `add` needs the VM to exist; a stored sink whose VM is gone
/// reaches it in no resource group (only admins of `*` or of that VM see it).
async fn reach(
    conn: &mut AnyConnection,
    scope: Option<&SinkScope>,
    must_exist: bool,
) -> Result<Reach> {
    Ok(match scope {
        None => Reach::Everything,
        Some(SinkScope::ResourceGroup(g)) => {
            if must_exist {
                inventory::require_group(&mut *conn, g).await?;
            }
            Reach::Group(g.clone())
        }
        Some(SinkScope::Vm(v)) => {
            let group = if must_exist {
                inventory::require_vm(&mut *conn, v).await?.resource_group
            } else {
                inventory::vm(&mut *conn, v)
                    .await?
                    .map(|r| r.resource_group)
                    .unwrap_or_default()
            };
            Reach::Vm {
                vm: v.clone(),
                group,
            }
        }
    })
}

/// Stores a checked sink in `w` and logs `op` (its redacted definition).
pub async fn store(
    w: &mut WriteTx,
    caller: &Caller,
    sink: &Sink,
    op: Operation,
) -> Result<SinkRow> {
    let spec = serde_json::to_string(&sink.to_spec())?;
    let by = caller.principal_id().to_string();
    notify::put_sink(w, &sink.name, &spec, &by).await?;
    tracing::info!(sink = %sink.name, format = sink.format.as_str(), by = %by, operation = op.as_str(), "notification sink stored");
    activity::log(w, entry(op, caller, sink)).await?;
    Ok(SinkRow {
        name: sink.name.clone(),
        spec,
        created_by: by,
        updated_at: w.now,
    })
}

fn info(sink: &Sink, row: &SinkRow) -> SinkInfo {
    SinkInfo {
        sink: sink.view(),
        created_by: row.created_by.clone(),
        updated_time_utc: jitgate_api::time::format(row.updated_at),
    }
}

/// The activity entry of a change to `sink` (its redacted definition).
fn entry(op: Operation, caller: &Caller, sink: &Sink) -> NewActivity {
    let (group, vm) = match &sink.scope {
        Some(SinkScope::ResourceGroup(g)) => (g.as_str(), ""),
        Some(SinkScope::Vm(v)) => ("", v.as_str()),
        None => ("", ""),
    };
    let mut a = NewActivity::other(op, ResourceType::NotificationSink, group, &caller.actor())
        .details(serde_json::json!({"sink": sink.view()}))
        .outcome(ActivityOutcome::Succeeded);
    a.vm = vm.to_string();
    a
}

fn target_refused(e: TargetError) -> Error {
    match e {
        TargetError::Resolve(ResolveError::Blocked(b)) => Error::refused(
            ErrorCode::BlockedAddress,
            format!("the sink's host resolves to {b}: notifications are not sent there"),
        ),
        e => Error::refused(ErrorCode::InvalidSink, e.to_string()),
    }
}
