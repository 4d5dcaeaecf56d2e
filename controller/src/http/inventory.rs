//! The caller, VMs and resource groups.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use jitgate_api::{Me, VmDetail};

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

async fn me(c: Caller) -> Json<Me> {
    Json(Me {
        name: c.name().into(),
        token_id: c.token_id().into(),
        role: c.role,
        scope: c.scope.clone(),
        caller_address: c.address.to_string(),
    })
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
