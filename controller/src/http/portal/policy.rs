//! The policy editor: a VM's or a resource group's JIT policy, as a form for those who may
//! change it (`authz` `WriteVmPolicy` / `WriteGroupPolicy`, the right of the API's `PUT`)
//! and read-only for those who may only read it. **Preview** stages the form's policy
//! through the service the API's `PUT` uses and rolls it back (`Policies::preview`): what
//! changes field by field and in words, the VMs that take it, and the activity entry saving
//! writes. **Save** posts the previewed policy with the version of the stored one it was
//! previewed against (`Policies::save`): if someone changed the policy since, nothing is
//! saved and the new preview is shown. **Delete** first shows what deleting changes (the
//! deletion run and rolled back, `Policies::preview_delete`), then deletes only the version
//! shown.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use jitgate_api::{ErrorCode, PolicyBody, PolicyPort, PolicyView};
use serde::Deserialize;

use crate::authz::{self, Action, Caller};
use crate::error::Error;
use crate::http::extract::Q;
use crate::http::portal::page::{
    Chrome, PageError, PageResult, html, policy_sources, refuse, see_other, url_path, when_utc,
};
use crate::http::portal::policy_form::PolicyForm;
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;
use crate::policies::Target;
use crate::policies::edit::{EditError, Precondition, Staged, Unstaged};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vms/{vm}/policy", get(vm_editor).post(vm_save))
        .route("/vms/{vm}/policy/preview", post(vm_preview))
        .route("/groups/{rg}/policy", get(group_editor).post(group_save))
        .route("/groups/{rg}/policy/preview", post(group_preview))
        .route("/vms/{vm}/policy/delete", post(vm_delete))
        .route("/groups/{rg}/policy/delete", post(group_delete))
}

/// Whose policy the page is about.
enum Whose {
    Vm(String),
    Group(String),
}

impl Whose {
    fn target(&self) -> Target<'_> {
        match self {
            Whose::Vm(v) => Target::Vm(v),
            Whose::Group(g) => Target::Group(g),
        }
    }

    /// The editor's path.
    fn path(&self) -> String {
        match self {
            Whose::Vm(v) => format!("/vms/{}/policy", url_path(v)),
            Whose::Group(g) => format!("/groups/{}/policy", url_path(g)),
        }
    }
}

/// What the page shows around the form: whose policy, what applies now, who may change it.
struct Context {
    /// "VM web1", "resource group prod".
    title: String,
    name: String,
    is_vm: bool,
    group: String,
    /// The stored policy of the target (None: it has none).
    current: Option<PolicyView>,
    /// For a VM without a policy of its own: its group's, which applies (the form starts
    /// from it).
    group_policy: Option<PolicyView>,
    group_applies: bool,
    editable: bool,
}

async fn context(st: &AppState, c: &Caller, whose: &Whose) -> Result<Context, PageError> {
    let current = match st.app.policies.get(c, whose.target()).await {
        Ok(p) => Some(p),
        Err(Error::Refused {
            code: ErrorCode::PolicyNotFound,
            ..
        }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(match whose {
        Whose::Vm(vm) => {
            let d = st.app.inventory.vm(c, vm).await?;
            let group_policy = if current.is_none() {
                d.effective_policy
            } else {
                None
            };
            Context {
                group_applies: group_policy.is_some(),
                group_policy,
                title: format!("VM {}", d.name),
                editable: authz::allowed(
                    c,
                    Action::WriteVmPolicy {
                        vm: &d.name,
                        group: &d.resource_group,
                    },
                ),
                name: d.name,
                is_vm: true,
                group: d.resource_group,
                current,
            }
        }
        Whose::Group(g) => Context {
            title: format!("resource group {g}"),
            name: g.clone(),
            is_vm: false,
            group: g.clone(),
            current,
            group_policy: None,
            group_applies: false,
            editable: authz::allowed(c, Action::WriteGroupPolicy { group: g }),
        },
    })
}

/// A policy's port as a line of the read-only view and of the activity entry's details.
struct PortLine {
    port: String,
    sources: String,
    max: String,
    expiry: &'static str,
    /// The most new connections per grant, in words.
    connections: String,
    approval: String,
}

impl PortLine {
    fn of(p: &PolicyPort) -> PortLine {
        PortLine {
            port: format!("{}/{}", p.number, p.protocol),
            sources: policy_sources(p),
            max: p.max_request_access_duration.clone(),
            expiry: match p.on_expiry {
                jitgate_api::OnExpiry::Keep => "keep open connections",
                jitgate_api::OnExpiry::Cut => "cut every connection",
            },
            connections: match p.max_connections {
                None => "unlimited".into(),
                Some(m) => format!("at most {m} per grant"),
            },
            approval: match &p.approval {
                None => "approved by policy".into(),
                Some(r) => {
                    let mut w: Vec<String> = r
                        .stages
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            format!(
                                "stage {}: {} of {}",
                                i + 1,
                                s.required,
                                s.approvers.join(", ")
                            )
                        })
                        .collect();
                    if let Some(a) = &r.auto_approve_up_to {
                        w.push(format!("approved by policy up to {a}"));
                    }
                    w.push(format!(
                        "waits at most {}",
                        r.timeout.as_deref().unwrap_or("PT1H")
                    ));
                    if r.allow_self_approval {
                        w.push("self-approval allowed".into());
                    }
                    if r.allow_emergency {
                        w.push("emergency approval allowed".into());
                    }
                    w.join("; ")
                }
            },
        }
    }
}

/// A field of the policy before and after, in words.
struct FieldRow {
    field: String,
    before: String,
    after: String,
}

/// A plan's field key (`ports[22/TCP].approval.stages[0].required`) in words.
fn field_words(key: &str) -> String {
    let (port, rest) = match key.strip_prefix("ports[").and_then(|k| k.split_once(']')) {
        Some((p, rest)) => (format!("port {p}"), rest.trim_start_matches('.')),
        None => (String::new(), key),
    };
    let stage = |rest: &str| -> Option<String> {
        let r = rest.strip_prefix("approval.stages[")?;
        let (n, part) = r.split_once("].")?;
        let n: usize = n.parse().ok()?;
        let part = match part {
            "approvers" => "approvers",
            "required" => "approvals required",
            other => other,
        };
        Some(format!("approval stage {}: {part}", n + 1))
    };
    let words = match rest {
        "number" => "port number".to_string(),
        "protocol" => "protocol".into(),
        "allowedSourceAddressPrefixes" => "allowed sources".into(),
        "maxRequestAccessDuration" => "longest access".into(),
        "onExpiry" => "at the end of access".into(),
        "maxConnections" => "most new connections per grant".into(),
        "approval.autoApproveUpTo" => "approved by policy up to".into(),
        "approval.timeout" => "approval timeout".into(),
        "approval.allowSelfApproval" => "self-approval allowed".into(),
        "approval.allowEmergency" => "emergency approval allowed".into(),
        other => stage(other).unwrap_or_else(|| other.to_string()),
    };
    if port.is_empty() {
        words
    } else {
        format!("{port}: {words}")
    }
}

/// The activity entry saving writes, in words.
struct EntryView {
    operation: String,
    resource: String,
    group: String,
    caller: String,
    address: String,
    outcome: String,
    action: &'static str,
    ports: Vec<PortLine>,
    details: String,
}

/// What saving would do.
struct PreviewView {
    lines: Vec<String>,
    weakens: bool,
    fields: Vec<FieldRow>,
    before_from: String,
    vms: Vec<String>,
    vms_count: i64,
    vms_more: i64,
    own: Vec<String>,
    own_count: i64,
    own_more: i64,
    overrides_group: bool,
    group: String,
    entry: EntryView,
    /// The previewed policy as the save form posts it (canonical JSON).
    body: String,
    version: String,
}

impl PreviewView {
    fn of(s: &Staged) -> Result<PreviewView, PageError> {
        let fields = crate::apply::policy_fields(
            s.before
                .as_ref()
                .map(|b| PolicyBody {
                    ports: b.ports.clone(),
                })
                .as_ref(),
            &PolicyBody {
                ports: s.view.ports.clone(),
            },
        )?
        .into_iter()
        .map(|f| FieldRow {
            field: field_words(&f.field),
            before: f.before.unwrap_or_else(|| "-".into()),
            after: f.after.unwrap_or_else(|| "-".into()),
        })
        .collect();
        let e = &s.entry;
        let ports: Vec<PolicyPort> =
            serde_json::from_value(e.details["ports"].clone()).unwrap_or_default();
        let entry = EntryView {
            operation: e.operation.as_str().to_string(),
            resource: if e.vm.is_empty() {
                format!("resource group {}", e.resource_group)
            } else {
                format!("VM {}", e.vm)
            },
            group: e.resource_group.clone(),
            caller: e.actor.name.clone(),
            address: e.actor.address.clone(),
            outcome: e.outcome.as_str().to_string(),
            action: if e.details["created"] == true {
                "creates the policy"
            } else {
                "replaces the policy"
            },
            ports: ports.iter().map(PortLine::of).collect(),
            details: serde_json::to_string_pretty(&e.details).map_err(Error::from)?,
        };
        let a = &s.affected;
        Ok(PreviewView {
            lines: s.change.lines.clone(),
            weakens: s.change.weakens,
            fields,
            before_from: s.before.as_ref().map_or_else(String::new, |b| {
                format!("{} ({})", b.updated_by, when_utc(&b.updated_time_utc))
            }),
            vms_more: a.count - a.vms.len() as i64,
            vms: a.vms.clone(),
            vms_count: a.count,
            own_more: a.own_policy_count - a.own_policy.len() as i64,
            own: a.own_policy.clone(),
            own_count: a.own_policy_count,
            overrides_group: a.overrides_group,
            group: s.group.clone(),
            entry,
            body: serde_json::to_string(&PolicyBody {
                ports: s.view.ports.clone(),
            })
            .map_err(Error::from)?,
            version: s.version.clone(),
        })
    }
}

#[derive(Template)]
#[template(path = "portal/policy.html")]
struct EditorPage {
    chrome: Chrome,
    c: Context,
    path: String,
    current: Vec<PortLine>,
    current_by: String,
    form: PolicyForm,
    preview: Option<PreviewView>,
    /// What deleting would do (after **Delete this policy**).
    delete: Option<DeleteView>,
    /// What happened, in words (saved; changed since the preview).
    notice: Option<String>,
    stale: bool,
}

fn render(
    v: &Viewer,
    whose: &Whose,
    c: Context,
    form: PolicyForm,
    shown: Shown,
    notice: Option<String>,
    code: StatusCode,
) -> PageResult {
    let (preview, delete) = match shown {
        Shown::Form => (None, None),
        Shown::Preview(p) => (Some(*p), None),
        Shown::Delete(d) => (None, Some(d)),
    };
    let current = c
        .current
        .as_ref()
        .map(|p| p.ports.iter().map(PortLine::of).collect())
        .unwrap_or_default();
    let current_by = c.current.as_ref().map_or_else(String::new, |p| {
        format!("{}, {}", p.updated_by, when_utc(&p.updated_time_utc))
    });
    Ok(html(
        code,
        &EditorPage {
            chrome: v.chrome("jit"),
            path: whose.path(),
            current,
            current_by,
            form,
            preview,
            delete,
            stale: code == StatusCode::CONFLICT,
            notice,
            c,
        },
    ))
}

/// What the page shows beside the policy in force and the form.
enum Shown {
    Form,
    Preview(Box<PreviewView>),
    Delete(DeleteView),
}

/// What deleting the policy would do.
struct DeleteView {
    lines: Vec<String>,
    /// For a VM: its group's policy applies to it afterwards.
    group_applies: bool,
    group: String,
    vms: Vec<String>,
    vms_count: i64,
    vms_more: i64,
    own_count: i64,
    /// The version of the policy shown, which the confirmation deletes.
    version: String,
}

impl DeleteView {
    fn of(u: &Unstaged) -> DeleteView {
        let a = &u.affected;
        DeleteView {
            lines: u.change.lines.clone(),
            group_applies: a.overrides_group,
            group: u.group.clone(),
            vms_more: a.count - a.vms.len() as i64,
            vms: a.vms.clone(),
            vms_count: a.count,
            own_count: a.own_policy_count,
            version: u.version.clone(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EditorQuery {
    /// Set after a save (the redirect's page says so).
    saved: Option<u8>,
    /// Set after a deletion.
    deleted: Option<u8>,
}

async fn editor(st: &AppState, v: &Viewer, whose: Whose, q: EditorQuery) -> PageResult {
    let c = context(st, &v.caller, &whose).await?;
    // A VM without a policy of its own starts from its group's.
    let form = form_of(&c);
    let notice = if q.saved.is_some() {
        Some(
            "Saved: the policy is in force, and the agents of the VMs it affects receive it \
             within seconds."
                .to_string(),
        )
    } else if q.deleted.is_some() {
        Some(
            "Deleted: the agents of the VMs it covered receive their new effective policy \
             within seconds."
                .to_string(),
        )
    } else {
        None
    };
    render(v, &whose, c, form, Shown::Form, notice, StatusCode::OK)
}

async fn vm_editor(
    State(st): State<AppState>,
    v: Viewer,
    Path(vm): Path<String>,
    Q(q): Q<EditorQuery>,
) -> PageResult {
    editor(&st, &v, Whose::Vm(vm), q).await
}

async fn group_editor(
    State(st): State<AppState>,
    v: Viewer,
    Path(rg): Path<String>,
    Q(q): Q<EditorQuery>,
) -> PageResult {
    editor(&st, &v, Whose::Group(rg), q).await
}

/// Refused unless the viewer may change this policy (the service checks again: this only
/// keeps a form's text from being judged for someone who may not write).
fn may_edit(c: &Context) -> Result<(), PageError> {
    if c.editable {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::Forbidden,
            format!(
                "changing the policy of {} needs the admin role on it: nothing was changed",
                c.title
            ),
        ))
    }
}

/// `POST .../policy/preview`: a button that adds or removes a row, or **Preview**: the
/// form's policy staged and rolled back, or its problems next to their fields.
async fn preview(st: &AppState, p: Posted, whose: Whose) -> PageResult {
    let v = &p.viewer;
    let c = context(st, &v.caller, &whose).await?;
    may_edit(&c)?;
    let mut form = PolicyForm::of_fields(&p.fields).map_err(|e| {
        PageError(crate::http::error::HttpError::new(
            ErrorCode::InvalidBody,
            e,
        ))
    })?;
    let action = p.one("action").unwrap_or("preview").to_string();
    if form.reshape(&action) {
        return render(v, &whose, c, form, Shown::Form, None, StatusCode::OK);
    }
    let body = match form.to_body() {
        Ok(b) => b,
        Err(problems) => {
            form.place(problems);
            return render(
                v,
                &whose,
                c,
                form,
                Shown::Form,
                None,
                StatusCode::BAD_REQUEST,
            );
        }
    };
    match st
        .app
        .policies
        .preview(&v.caller, whose.target(), &body)
        .await
    {
        Ok(staged) => {
            let pv = PreviewView::of(&staged)?;
            render(
                v,
                &whose,
                c,
                form,
                Shown::Preview(Box::new(pv)),
                None,
                StatusCode::OK,
            )
        }
        Err(EditError::Invalid(i)) => {
            form.place(i.0);
            render(
                v,
                &whose,
                c,
                form,
                Shown::Form,
                None,
                StatusCode::BAD_REQUEST,
            )
        }
        Err(e) => Err(Error::from(e).into()),
    }
}

async fn vm_preview(State(st): State<AppState>, Path(vm): Path<String>, p: Posted) -> PageResult {
    preview(&st, p, Whose::Vm(vm)).await
}

async fn group_preview(
    State(st): State<AppState>,
    Path(rg): Path<String>,
    p: Posted,
) -> PageResult {
    preview(&st, p, Whose::Group(rg)).await
}

/// `POST .../policy`: the previewed policy saved if the stored one is still the version
/// it was previewed against; otherwise nothing is saved and the new preview is shown.
async fn save(st: &AppState, p: Posted, whose: Whose) -> PageResult {
    let v = &p.viewer;
    let body: PolicyBody = serde_json::from_str(p.one("body").unwrap_or_default())
        .map_err(|e| refuse(ErrorCode::InvalidBody, format!("the previewed policy: {e}")))?;
    let version = p.one("version").unwrap_or_default();
    let target = whose.target();
    match st
        .app
        .policies
        .save(&v.caller, target, &body, version)
        .await
    {
        Ok(_) => Ok(see_other(&format!("{}?saved=1", whose.path()))),
        Err(EditError::Stale) => {
            let c = context(st, &v.caller, &whose).await?;
            let form = PolicyForm::of_body(Some(&body));
            let staged = st
                .app
                .policies
                .preview(&v.caller, target, &body)
                .await
                .map_err(Error::from)?;
            let notice = format!(
                "Not saved: the policy was changed since your preview{}. Here is the preview \
                 against the policy as it is now; save again if it is still what you want.",
                c.current.as_ref().map_or_else(
                    || " (it was deleted)".to_string(),
                    |p| format!(" (by {}, {})", p.updated_by, when_utc(&p.updated_time_utc))
                )
            );
            let pv = PreviewView::of(&staged)?;
            render(
                v,
                &whose,
                c,
                form,
                Shown::Preview(Box::new(pv)),
                Some(notice),
                StatusCode::CONFLICT,
            )
        }
        Err(EditError::Invalid(i)) => {
            let c = context(st, &v.caller, &whose).await?;
            let mut form = PolicyForm::of_body(Some(&body));
            form.place(i.0);
            render(
                v,
                &whose,
                c,
                form,
                Shown::Form,
                None,
                StatusCode::BAD_REQUEST,
            )
        }
        Err(EditError::Other(e)) => Err(e.into()),
    }
}

async fn vm_save(State(st): State<AppState>, Path(vm): Path<String>, p: Posted) -> PageResult {
    save(&st, p, Whose::Vm(vm)).await
}

async fn group_save(State(st): State<AppState>, Path(rg): Path<String>, p: Posted) -> PageResult {
    save(&st, p, Whose::Group(rg)).await
}

/// The form of the page beside a deletion: the policy in force (or the group's).
fn form_of(c: &Context) -> PolicyForm {
    PolicyForm::of_body(
        c.current
            .as_ref()
            .or(c.group_policy.as_ref())
            .map(|p| PolicyBody {
                ports: p.ports.clone(),
            })
            .as_ref(),
    )
}

/// `POST .../policy/delete`: without `confirm`, what deleting changes (run and rolled
/// back); with `confirm=yes`, the deletion of the version shown, or, if the policy changed
/// since, nothing and what deleting it now would change.
async fn delete(st: &AppState, p: Posted, whose: Whose) -> PageResult {
    let v = &p.viewer;
    let c = context(st, &v.caller, &whose).await?;
    may_edit(&c)?;
    let target = whose.target();
    let mut notice = None;
    let mut code = StatusCode::OK;
    if p.one("confirm") == Some("yes") {
        let version = p.one("version").unwrap_or_default();
        match st
            .app
            .policies
            .delete(&v.caller, target, Some(Precondition::Version(version)))
            .await
        {
            Ok(_) => return Ok(see_other(&format!("{}?deleted=1", whose.path()))),
            Err(EditError::Stale) => {
                code = StatusCode::CONFLICT;
                notice = Some(match &c.current {
                    None => "Not deleted: the policy was deleted meanwhile.".to_string(),
                    Some(p) => format!(
                        "Not deleted: the policy was changed since you reviewed it (by {}, \
                         {}). Here is what deleting it now changes; delete again if it is \
                         still what you want.",
                        p.updated_by,
                        when_utc(&p.updated_time_utc)
                    ),
                });
            }
            Err(e) => return Err(Error::from(e).into()),
        }
    }
    let form = form_of(&c);
    if c.current.is_none() {
        return render(v, &whose, c, form, Shown::Form, notice, code);
    }
    let gone = st
        .app
        .policies
        .preview_delete(&v.caller, target)
        .await
        .map_err(Error::from)?;
    render(
        v,
        &whose,
        c,
        form,
        Shown::Delete(DeleteView::of(&gone)),
        notice,
        code,
    )
}

async fn vm_delete(State(st): State<AppState>, Path(vm): Path<String>, p: Posted) -> PageResult {
    delete(&st, p, Whose::Vm(vm)).await
}

async fn group_delete(State(st): State<AppState>, Path(rg): Path<String>, p: Posted) -> PageResult {
    delete(&st, p, Whose::Group(rg)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fields_read_as_words() {
        assert_eq!(
            field_words("ports[22/TCP].maxRequestAccessDuration"),
            "port 22/TCP: longest access"
        );
        assert_eq!(
            field_words("ports[3389/*].approval.stages[1].required"),
            "port 3389/*: approval stage 2: approvals required"
        );
        assert_eq!(
            field_words("ports[22/TCP].allowedSourceAddressPrefixes"),
            "port 22/TCP: allowed sources"
        );
    }
}
