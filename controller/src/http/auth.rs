//! Sign-in for `jit login` (`/api/v1/auth/...`): the CLI's loopback code flow and the device
//! flow, brokered by the controller, whoami and sign-out. The starts are unauthenticated
//! and rate-limited per address; they write nothing (the sign-in state travels sealed).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jitgate_api::{
    CallbackBody, DevicePollBody, DeviceStarted, LoginBody, LoginStarted, SessionGranted, Whoami,
};

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::{Body, ClientAddr};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/callback", post(callback))
        .route("/api/v1/auth/device", post(device))
        .route("/api/v1/auth/device/poll", post(device_poll))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/whoami", get(whoami))
}

async fn login(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Body(body): Body<LoginBody>,
) -> Result<Json<LoginStarted>, HttpError> {
    st.sign_in_limit.check(addr, "sign-in")?;
    Ok(Json(st.app.sessions.start_login(&body).await?))
}

async fn callback(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Body(body): Body<CallbackBody>,
) -> Result<Json<SessionGranted>, HttpError> {
    Ok(Json(
        st.app
            .sessions
            .finish_login(&body, addr, jitgate_oidc::ClientKind::Cli)
            .await?
            .granted,
    ))
}

async fn device(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
) -> Result<Json<DeviceStarted>, HttpError> {
    st.sign_in_limit.check(addr, "sign-in")?;
    Ok(Json(st.app.sessions.start_device().await?))
}

/// 202 `{"status": "pending"}` until the person approves, then 200 with the session.
async fn device_poll(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Body(body): Body<DevicePollBody>,
) -> Result<Response, HttpError> {
    Ok(match st.app.sessions.poll_device(&body, addr).await? {
        Some(created) => Json(created.granted).into_response(),
        None => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"status": "pending"})),
        )
            .into_response(),
    })
}

async fn logout(State(st): State<AppState>, c: Caller) -> Result<StatusCode, HttpError> {
    st.app.sessions.logout(&c).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn whoami(State(st): State<AppState>, c: Caller) -> Result<Json<Whoami>, HttpError> {
    Ok(Json(st.app.sessions.whoami(&c).await?))
}
