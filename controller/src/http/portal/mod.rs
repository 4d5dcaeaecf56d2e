//! The web portal (docs/portal.md): server-rendered pages on the controller's HTTPS
//! listener, over the same services as the JSON API (no HTTP calls to itself), so every
//! action is authorised exactly as the API authorises it.
//!
//! - [`session`]: who is looking (the sign-in cookie) and the checks of every form
//!   (Origin, CSRF), in one place.
//! - [`page`]: security headers, the frame of each page, rendering, errors as pages.
//! - [`vms`]: the "Just-in-time VM access" page, a VM's page, request history.
//! - [`form`]: request access (the form, checked as it is filled in, and its submission).
//! - [`requests`]: the request page (live status, connection details), revoke, cancel, the
//!   `.rdp` download; [`connect`] builds the connection details.
//! - [`direct`]: Connect to a VM that no policy covers (details at once, no request).
//! - [`approvals`]: the inbox of requests waiting for my decision.
//! - [`activity`]: the activity log, its exports and its verification.
//! - [`fleet`]: the agents (state, reports, versions) and an agent's delivered audit
//!   records with their verification.
//! - [`connections`]: who connected to a VM, under which request (or break-glass), and
//!   the denied attempts; exported as the API exports them.
//! - [`notifications`]: the notification sinks (admins), their delivery state, their dead
//!   deliveries with retry and discard, and a test message.
//! - [`policy`]: the policy editor of a VM or a resource group (read-only for readers):
//!   preview (a dry run of the save: before/after, affected VMs, the activity entry) and
//!   save against the previewed version; [`policy_form`] is its form.
//! - [`compliance`]: the compliance dashboard (the report as of a date, the chart of
//!   [`compliance_chart`], findings grouped by owner or resource group, exports, scan,
//!   probe, remediation and assignments for admins).
//! - [`keys`]: the grant-signing keys and the rotation under way (admins on `*`).
//! - [`assets`]: the style sheet and htmx, compiled in.
//!
//! Templates (askama, escaping by default) are in `controller/templates/portal/`. Pages
//! work without JavaScript; htmx refreshes the request's status in place and checks the
//! request form as it is filled in.

pub mod activity;
pub mod approvals;
pub mod assets;
pub mod compliance;
pub mod compliance_chart;
pub mod connect;
pub mod connections;
pub mod direct;
pub mod fleet;
pub mod form;
pub mod keys;
pub mod notifications;
pub mod page;
pub mod policy;
pub mod policy_form;
pub mod requests;
pub mod session;
pub mod vms;

use axum::Router;

use crate::http::state::AppState;

/// Every portal route and the browser's sign-in, each response with the portal's security
/// headers.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(crate::http::web_signin::router())
        .merge(vms::router())
        .merge(form::router())
        .merge(requests::router())
        .merge(direct::router())
        .merge(approvals::router())
        .merge(activity::router())
        .merge(fleet::router())
        .merge(connections::router())
        .merge(notifications::router())
        .merge(policy::router())
        .merge(compliance::router())
        .merge(keys::router())
        .merge(assets::router())
        .layer(axum::middleware::from_fn(page::headers))
}
