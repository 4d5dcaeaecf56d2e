//! The caller, VMs and resource groups.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use jitgate_api::{ErrorCode, Me, VmDetail};

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::respond::list;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me", get(me))
        .route("/api/v1/virtualMachines", get(vms))
        .route("/api/v1/virtualMachines/{vm}", get(vm))
        .route("/api/v1/resourceGroups", get(groups))
}

/// The caller's strongest grant (a person may hold several: `/auth/whoami` lists them).
async fn me(c: Caller) -> Result<Json<Me>, HttpError> {
    let Some(g) = c.grants.iter().max_by_key(|g| g.role) else {
        return Err(HttpError::new(
            ErrorCode::Forbidden,
            format!(
                "{} holds no role: see GET /api/v1/auth/whoami for why",
                c.name()
            ),
        ));
    };
    Ok(Json(Me {
        name: c.name().into(),
        token_id: c.token_id().into(),
        role: g.role,
        scope: g.scope.clone(),
        caller_address: c.address.to_string(),
    }))
}

async fn vms(State(st): State<AppState>, c: Caller) -> Result<Response, HttpError> {
    Ok(list(st.app.inventory.vms(&c).await?))
}

async fn vm(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<Json<VmDetail>, HttpError> {
    Ok(Json(st.app.inventory.vm(&c, &vm).await?))
}

async fn groups(State(st): State<AppState>, c: Caller) -> Result<Response, HttpError> {
    Ok(list(st.app.inventory.groups(&c).await?))
}
