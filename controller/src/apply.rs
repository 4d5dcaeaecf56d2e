//! Policies as code (`jit apply`, `jit export`; docs/operations.md "Policies as code").
//!
//! The current state the caller can see is read as a [`Document`]; the declared one is
//! validated and brought to the stored form (so a file written by `jit export` compares
//! equal); their difference is the plan. Every change of the plan runs through the same
//! domain function the rest of the API uses (which authorises it, validates it, writes it,
//! logs it under the caller and wakes the agents it concerns), all in ONE write transaction:
//! a refusal anywhere rolls everything back, and a dry run is the same run rolled back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use jitgate_api::{
    ApplyBody, AssignmentDecl, DeclKind, Document, ErrorCode, FieldChange, GroupDecl, Plan,
    PlanAction, PlannedChange, PolicyBody, PolicyDecl, PolicyPort, PolicyScope, PortDecl, Scope,
    SinkDecl, VmDecl,
};
use jitgate_notify::SinkSpec;
use serde_json::Value;

use crate::app::App;
use crate::authz::{self, Action, Caller, SinkReach};
use crate::compliance;
use crate::error::{Error, Result};
use crate::input::parse_scope;
use crate::inventory;
use crate::policies::{self, Target};
use crate::policy::Policy;
use crate::store::compliance as assignments;
use crate::store::inventory as inv;
use crate::store::policies as stored_policies;
use crate::store::write::WriteTx;

/// How a value that may be a credential shows in a plan.
const NOT_SHOWN: &str = "(not shown)";

/// What the caller can see, as a document (sink targets included: see [`export`]), with the
/// ids of the compliance assignments by scope.
struct Current {
    doc: Document,
    assignment_ids: BTreeMap<String, String>,
}

/// The state the caller can see, in the declaration format: URL sink targets (possibly
/// credentials) are left out; a file keeps them by `target_file`, or leaves them as they are.
pub async fn export(app: &App, caller: &Caller) -> Result<Document> {
    let mut conn = app.db.pool().acquire().await?;
    let mut cur = current(&mut conn, app, caller).await?;
    for s in &mut cur.doc.sinks {
        if is_url(&s.format) {
            s.target = None;
        }
    }
    Ok(cur.doc)
}

/// Plans the document against the current state and, unless this is a dry run (or there is
/// nothing to do), applies the plan in one transaction.
pub async fn apply(app: &App, caller: &Caller, body: ApplyBody) -> Result<Plan> {
    let stored_sinks = app.notifications.specs(caller).await?;
    let declared = normalise(app, body.document, &stored_sinks)?;
    // Sinks that would change are checked first (their URL's host is resolved): outside the
    // write transaction, which must not wait on the network.
    let mut checked = BTreeMap::new();
    for s in &declared.sinks {
        let spec = sink_spec(s);
        let before = stored_sinks.iter().find(|c| c.name == s.name);
        if before != Some(&spec) {
            let sink = app.notifications.check(caller, new_sink(spec)).await?;
            checked.insert(s.name.clone(), sink);
        }
    }
    let mut w = app.db.begin().await?;
    w.dry_run = body.dry_run;
    let cur = current(w.conn(), app, caller).await?;
    let mut plan = diff(&cur.doc, &declared, caller, body.prune)?;
    plan.sort_by_key(order);
    for change in &plan {
        run(&mut w, app, caller, change, &declared, &cur, &checked).await?;
    }
    let applied = !plan.is_empty() && !body.dry_run;
    if applied {
        w.commit().await?;
        tracing::info!(caller = %caller.name(), changes = plan.len(), "declaration applied");
    }
    // Otherwise dropping `w` rolls the dry run back.
    Ok(Plan {
        changes: plan,
        applied,
    })
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::refused(ErrorCode::InvalidDocument, msg)
}

fn is_url(format: &str) -> bool {
    format.trim() != "email"
}

/// The declared document checked and in the form the controller stores (the server never
/// trusts the client's parsing): duplicates refused, addresses and policies normalised,
/// sinks without a target given the stored one.
fn normalise(app: &App, mut d: Document, stored_sinks: &[SinkSpec]) -> Result<Document> {
    fn unique(kind: &str, keys: impl Iterator<Item = String>) -> Result<()> {
        let mut seen = BTreeSet::new();
        for k in keys {
            if !seen.insert(k.clone()) {
                return Err(invalid(format!("{kind} {k} is declared twice")));
            }
        }
        Ok(())
    }
    unique(
        "resource group",
        d.resource_groups.iter().map(|g| g.name.clone()),
    )?;
    unique("VM", d.vms.iter().map(|v| v.name.clone()))?;
    for v in &mut d.vms {
        let mut addrs = Vec::with_capacity(v.addresses.len());
        for a in &v.addresses {
            let ip: IpAddr = a.trim().parse().map_err(|_| {
                invalid(format!("VM {}: address {a:?} is not an IP address", v.name))
            })?;
            addrs.push(ip);
        }
        v.addresses = inventory::addresses_text(&addrs);
    }
    for p in &mut d.policies {
        let key = policy_key(p)?;
        let body = PolicyBody {
            ports: p.ports.drain(..).map(PolicyPort::from).collect(),
        };
        let policy = Policy::check_new(&body)
            .map_err(|e| Error::from(e).context(&format!("policy {key}")))?;
        p.ports = policy
            .to_body()
            .ports
            .into_iter()
            .map(PortDecl::from)
            .collect();
    }
    unique(
        "policy",
        d.policies
            .iter()
            .map(policy_key)
            .collect::<Result<Vec<_>>>()?
            .into_iter(),
    )?;
    for a in &mut d.compliance_assignments {
        a.scope = parse_scope(&a.scope)?.to_string();
    }
    unique(
        "compliance assignment at",
        d.compliance_assignments.iter().map(|a| a.scope.clone()),
    )?;
    unique("notification sink", d.sinks.iter().map(|s| s.name.clone()))?;
    for s in &mut d.sinks {
        if s.target_file.is_some() {
            return Err(invalid(format!(
                "sink {}: target_file is read by jit, never sent: send the target itself",
                s.name
            )));
        }
        if s.target.is_none() {
            s.target = stored_sinks
                .iter()
                .find(|c| c.name == s.name)
                .map(|c| c.target.clone());
        }
        if s.target.is_none() {
            return Err(invalid(format!(
                "sink {} is new: it needs a target (or target_file)",
                s.name
            )));
        }
        *s = sink_decl(app.notifications.normalise(&sink_spec(s))?);
    }
    Ok(d)
}

/// `vm:NAME` or `rg:NAME`: exactly one of the two.
fn policy_key(p: &PolicyDecl) -> Result<String> {
    match (&p.vm, &p.resource_group) {
        (Some(vm), None) => Ok(format!("vm:{vm}")),
        (None, Some(g)) => Ok(format!("rg:{g}")),
        _ => Err(invalid(
            "a policy names either vm or resource_group (exactly one)",
        )),
    }
}

fn sink_spec(s: &SinkDecl) -> SinkSpec {
    SinkSpec {
        name: s.name.clone(),
        events: s.events.clone(),
        scope: s.scope.clone(),
        format: s.format.clone(),
        target: s.target.clone().unwrap_or_default(),
        secret: s.secret.clone(),
        to_group: s.to_group.clone(),
    }
}

fn new_sink(s: SinkSpec) -> jitgate_api::NewSink {
    jitgate_api::NewSink {
        name: s.name,
        format: s.format,
        target: s.target,
        events: s.events,
        scope: s.scope,
        secret: s.secret,
        to_group: s.to_group,
    }
}

fn sink_decl(s: SinkSpec) -> SinkDecl {
    SinkDecl {
        name: s.name,
        format: s.format,
        target: Some(s.target),
        target_file: None,
        events: s.events,
        scope: s.scope,
        secret: s.secret,
        to_group: s.to_group,
    }
}

/// What the caller can see now. `conn` may be the write transaction's.
async fn current(conn: &mut sqlx::AnyConnection, app: &App, caller: &Caller) -> Result<Current> {
    let mut doc = Document::default();
    for g in inv::groups(&mut *conn).await? {
        if authz::sees_group(caller, &g.name) {
            doc.resource_groups.push(GroupDecl {
                name: g.name,
                owner: g.owner,
            });
        }
    }
    for v in inv::vms(&mut *conn).await? {
        if authz::sees_vm(caller, &v.name, &v.resource_group) {
            doc.vms.push(VmDecl {
                name: v.name,
                resource_group: v.resource_group,
                addresses: v.addresses.0,
            });
        }
    }
    let group_of: BTreeMap<&str, &str> = doc
        .vms
        .iter()
        .map(|v| (v.name.as_str(), v.resource_group.as_str()))
        .collect();
    let mut policies = Vec::new();
    for row in stored_policies::all(&mut *conn).await? {
        let (vm, resource_group, visible) = match row.scope_kind {
            PolicyScope::VirtualMachine => {
                let visible = group_of.contains_key(row.scope_name.as_str());
                (Some(row.scope_name), None, visible)
            }
            PolicyScope::ResourceGroup => {
                let visible = authz::sees_group(caller, &row.scope_name);
                (None, Some(row.scope_name), visible)
            }
        };
        if visible {
            policies.push(PolicyDecl {
                vm,
                resource_group,
                ports: row.body.0.ports.into_iter().map(PortDecl::from).collect(),
            });
        }
    }
    doc.policies = policies;
    let mut assignment_ids = BTreeMap::new();
    for a in assignments::assignments(&mut *conn).await? {
        let visible = match &a.scope {
            Scope::All => caller.grants.iter().any(|g| g.scope == Scope::All),
            Scope::ResourceGroup(g) => authz::sees_group(caller, g),
            Scope::Vm(v) => group_of.contains_key(v.as_str()),
        };
        if visible {
            let scope = a.scope.to_string();
            doc.compliance_assignments.push(AssignmentDecl {
                scope: scope.clone(),
            });
            assignment_ids.insert(scope, a.id);
        }
    }
    doc.sinks = app
        .notifications
        .specs(caller)
        .await?
        .into_iter()
        .map(sink_decl)
        .collect();
    Ok(Current {
        doc,
        assignment_ids,
    })
}

/// An object of a document: its kind, key and fields (flattened; a credential marked with
/// [`NOT_SHOWN`]).
struct Object {
    kind: DeclKind,
    key: String,
    fields: BTreeMap<String, String>,
}

fn objects(d: &Document) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    let mut add = |kind: DeclKind, key: String, v: Value| {
        let mut fields = BTreeMap::new();
        flatten("", &v, &mut fields);
        out.push(Object { kind, key, fields });
    };
    for g in &d.resource_groups {
        add(
            DeclKind::ResourceGroup,
            g.name.clone(),
            serde_json::to_value(g)?,
        );
    }
    for v in &d.vms {
        let mut v = v.clone();
        v.addresses.sort();
        add(
            DeclKind::VirtualMachine,
            v.name.clone(),
            serde_json::to_value(&v)?,
        );
    }
    for p in &d.policies {
        add(DeclKind::Policy, policy_key(p)?, serde_json::to_value(p)?);
    }
    for a in &d.compliance_assignments {
        add(
            DeclKind::ComplianceAssignment,
            a.scope.clone(),
            serde_json::to_value(a)?,
        );
    }
    for s in &d.sinks {
        let mut s = s.clone();
        let mut events = s.events.clone();
        events.sort();
        s.events = events;
        if is_url(&s.format) {
            // Compared by a fingerprint, never shown.
            s.target = s.target.as_deref().map(fingerprint);
        }
        add(
            DeclKind::NotificationSink,
            s.name.clone(),
            serde_json::to_value(&s)?,
        );
    }
    Ok(out)
}

/// A secret-bearing value, marked: compared as itself, shown as [`NOT_SHOWN`] (the plan
/// never carries it).
fn fingerprint(s: &str) -> String {
    format!("{NOT_SHOWN}{s}")
}

/// Flattens a value into `path -> text`: ports keyed by `number/protocol`, lists of plain
/// values as one field.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let text: Vec<String> = items.iter().map(scalar).collect();
            out.insert(prefix.to_string(), format!("[{}]", text.join(", ")));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let key = match (item.get("number"), item.get("protocol")) {
                    (Some(n), Some(p)) => format!("{prefix}[{}/{}]", scalar(n), scalar(p)),
                    _ => format!("{prefix}[{i}]"),
                };
                flatten(&key, item, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), scalar(other));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The changes from `cur` to `want`; without `prune`, undeclared objects stay; with it, those
/// the caller may delete go.
fn diff(
    cur: &Document,
    want: &Document,
    caller: &Caller,
    prune: bool,
) -> Result<Vec<PlannedChange>> {
    let before = objects(cur)?;
    let after = objects(want)?;
    let find =
        |list: &[Object], o: &Object| list.iter().position(|x| x.kind == o.kind && x.key == o.key);
    let shown = |f: &BTreeMap<String, String>, k: &str| {
        f.get(k).map(|v| {
            if v.starts_with(NOT_SHOWN) {
                NOT_SHOWN.to_string()
            } else {
                v.clone()
            }
        })
    };
    let mut plan = Vec::new();
    for o in &after {
        let (action, old) = match find(&before, o) {
            Some(i) => (PlanAction::Change, Some(&before[i].fields)),
            None => (PlanAction::Create, None),
        };
        let empty = BTreeMap::new();
        let fields = changed_fields(old.unwrap_or(&empty), &o.fields, shown);
        if action == PlanAction::Create || !fields.is_empty() {
            plan.push(PlannedChange {
                action,
                kind: o.kind.clone(),
                name: o.key.clone(),
                fields,
            });
        }
    }
    if prune {
        for o in before.iter().filter(|o| find(&after, o).is_none()) {
            if may_delete(cur, caller, o) {
                plan.push(PlannedChange {
                    action: PlanAction::Delete,
                    kind: o.kind.clone(),
                    name: o.key.clone(),
                    fields: o
                        .fields
                        .keys()
                        .map(|k| FieldChange {
                            field: k.clone(),
                            before: shown(&o.fields, k),
                            after: None,
                        })
                        .collect(),
                });
            }
        }
    }
    Ok(plan)
}

/// The fields whose values differ between two flattened objects, each before and after
/// as `shown` gives it.
fn changed_fields(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    shown: impl Fn(&BTreeMap<String, String>, &str) -> Option<String>,
) -> Vec<FieldChange> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| FieldChange {
            field: k.clone(),
            before: shown(old, k),
            after: shown(new, k),
        })
        .collect()
}

/// What a policy change replaces, field by field, as a plan shows it (`ports[22/TCP].
/// maxRequestAccessDuration`, ...): `before` (None: there was none) and `after`. The
/// sources read as one list whether the body gives one prefix or several.
pub fn policy_fields(before: Option<&PolicyBody>, after: &PolicyBody) -> Result<Vec<FieldChange>> {
    fn flat(b: Option<&PolicyBody>) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let Some(b) = b else { return Ok(out) };
        let mut v = serde_json::to_value(b)?;
        if let Some(Value::Array(ports)) = v.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(one) = p.remove("allowedSourceAddressPrefix") {
                    p.insert(
                        "allowedSourceAddressPrefixes".into(),
                        Value::Array(vec![one]),
                    );
                }
            }
        }
        flatten("", &v, &mut out);
        Ok(out)
    }
    Ok(changed_fields(
        &flat(before)?,
        &flat(Some(after))?,
        |f, k| f.get(k).cloned(),
    ))
}

/// Whether `--prune` touches this undeclared object: only one the caller may delete (an
/// object it merely sees stays).
fn may_delete(cur: &Document, caller: &Caller, o: &Object) -> bool {
    let group_of = |vm: &str| {
        cur.vms
            .iter()
            .find(|v| v.name == vm)
            .map(|v| v.resource_group.as_str())
            .unwrap_or_default()
    };
    match o.kind {
        DeclKind::ResourceGroup => authz::allowed(caller, Action::CreateOrDeleteGroup),
        DeclKind::VirtualMachine => authz::allowed(
            caller,
            Action::WriteVm {
                group: group_of(&o.key),
            },
        ),
        DeclKind::Policy => match o.key.split_once(':') {
            Some(("vm", vm)) => authz::allowed(
                caller,
                Action::WriteVmPolicy {
                    vm,
                    group: group_of(vm),
                },
            ),
            Some((_, g)) => authz::allowed(caller, Action::WriteGroupPolicy { group: g }),
            None => false,
        },
        DeclKind::ComplianceAssignment => authz::allowed(caller, Action::AdministerAll),
        DeclKind::NotificationSink => {
            let scope = o.fields.get("scope").map(String::as_str);
            let reach = match scope.and_then(|s| s.split_once(':')) {
                None => SinkReach::Everything,
                Some(("vm", vm)) => SinkReach::Vm {
                    vm,
                    group: group_of(vm),
                },
                Some((_, g)) => SinkReach::Group(g),
            };
            authz::allowed(caller, Action::ManageSink { reach })
        }
        DeclKind::Other(_) => false,
    }
}

/// The order changes run in: what others depend on is deleted last and created first.
fn order(c: &PlannedChange) -> u8 {
    use DeclKind as K;
    use PlanAction as A;
    match (&c.action, &c.kind) {
        (A::Delete, K::NotificationSink) => 0,
        (A::Delete, K::ComplianceAssignment) => 1,
        (A::Delete, K::Policy) => 2,
        (A::Delete, K::VirtualMachine) => 3,
        (_, K::ResourceGroup) if c.action != A::Delete => 4,
        (_, K::VirtualMachine) => 5,
        (A::Delete, K::ResourceGroup) => 6,
        (_, K::Policy) => 7,
        (_, K::ComplianceAssignment) => 8,
        _ => 9,
    }
}

/// Runs one change through the API's own domain function, in `w`.
async fn run(
    w: &mut WriteTx,
    app: &App,
    caller: &Caller,
    c: &PlannedChange,
    want: &Document,
    cur: &Current,
    checked: &BTreeMap<String, jitgate_notify::Sink>,
) -> Result<()> {
    let gone = || Error::Internal(format!("planned {} {} is not declared", c.kind, c.name));
    match (&c.kind, &c.action) {
        (DeclKind::ResourceGroup, PlanAction::Delete) => {
            inventory::delete_group(w, caller, &c.name).await
        }
        (DeclKind::ResourceGroup, a) => {
            let g = want
                .resource_groups
                .iter()
                .find(|g| g.name == c.name)
                .ok_or_else(gone)?;
            if *a == PlanAction::Create {
                inventory::create_group(w, caller, &g.name, &g.owner).await
            } else {
                inventory::change_group(w, caller, &g.name, &g.owner).await
            }
        }
        (DeclKind::VirtualMachine, PlanAction::Delete) => {
            inventory::delete_vm(w, caller, &c.name).await
        }
        (DeclKind::VirtualMachine, a) => {
            let v = want
                .vms
                .iter()
                .find(|v| v.name == c.name)
                .ok_or_else(gone)?;
            if *a == PlanAction::Create {
                inventory::create_vm(w, caller, &v.name, &v.resource_group, &v.addresses).await
            } else {
                inventory::change_vm(w, caller, &v.name, &v.resource_group, &v.addresses).await
            }
        }
        (DeclKind::Policy, a) => {
            let target = match c.name.split_once(':') {
                Some(("vm", vm)) => Target::Vm(vm),
                Some(("rg", g)) => Target::Group(g),
                _ => return Err(gone()),
            };
            if *a == PlanAction::Delete {
                return policies::remove(w, caller, target).await.map(|_| ());
            }
            let p = want
                .policies
                .iter()
                .find(|p| policy_key(p).is_ok_and(|k| k == c.name))
                .ok_or_else(gone)?;
            let body = PolicyBody {
                ports: p.ports.iter().cloned().map(PolicyPort::from).collect(),
            };
            policies::set(w, caller, target, &Policy::from_body(&body)?)
                .await
                .map(drop)
        }
        (DeclKind::ComplianceAssignment, PlanAction::Delete) => {
            let id = cur.assignment_ids.get(&c.name).ok_or_else(gone)?;
            compliance::unassign(w, caller, id).await
        }
        (DeclKind::ComplianceAssignment, _) => {
            compliance::assign(w, caller, &c.name).await.map(drop)
        }
        (DeclKind::NotificationSink, PlanAction::Delete) => {
            app.notifications.remove_in(w, caller, &c.name).await
        }
        (DeclKind::NotificationSink, a) => {
            let sink = checked.get(&c.name).ok_or_else(|| {
                Error::refused(
                    ErrorCode::InvalidDocument,
                    format!(
                        "sink {} changed while the plan was made: apply again",
                        c.name
                    ),
                )
            })?;
            if *a == PlanAction::Create {
                if crate::store::notify::sink(w.conn(), &c.name)
                    .await?
                    .is_some()
                {
                    return Err(Error::refused(
                        ErrorCode::SinkExists,
                        format!(
                            "a notification sink named {} exists outside your scope or in controller.toml",
                            c.name
                        ),
                    ));
                }
                crate::outbox::admin::store(w, caller, sink, jitgate_api::Operation::AddSink)
                    .await
                    .map(drop)
            } else {
                app.notifications.replace_in(w, caller, sink).await
            }
        }
        (DeclKind::Other(k), _) => Err(invalid(format!("unknown object kind {k}"))),
    }
}
