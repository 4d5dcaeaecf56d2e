//! JIT policies of VMs and resource groups.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use jitgate_api::{PolicyBody, PolicyView};

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::Body;
use crate::http::state::AppState;
use crate::policies::Target;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/virtualMachines/{vm}/jitNetworkAccessPolicies/default",
            get(get_vm).put(put_vm).delete(delete_vm),
        )
        .route(
            "/api/v1/resourceGroups/{rg}/jitNetworkAccessPolicies/default",
            get(get_rg).put(put_rg).delete(delete_rg),
        )
}

async fn get_vm(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<Json<PolicyView>, HttpError> {
    Ok(Json(st.app.policies.get(&c, Target::Vm(&vm)).await?))
}

async fn put_vm(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    Body(body): Body<PolicyBody>,
) -> Result<Json<PolicyView>, HttpError> {
    Ok(Json(st.app.policies.put(&c, Target::Vm(&vm), &body).await?))
}

async fn delete_vm(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<StatusCode, HttpError> {
    st.app.policies.delete(&c, Target::Vm(&vm)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_rg(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
) -> Result<Json<PolicyView>, HttpError> {
    Ok(Json(st.app.policies.get(&c, Target::Group(&rg)).await?))
}

async fn put_rg(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
    Body(body): Body<PolicyBody>,
) -> Result<Json<PolicyView>, HttpError> {
    Ok(Json(
        st.app.policies.put(&c, Target::Group(&rg), &body).await?,
    ))
}

async fn delete_rg(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
) -> Result<StatusCode, HttpError> {
    st.app.policies.delete(&c, Target::Group(&rg)).await?;
    Ok(StatusCode::NO_CONTENT)
}
