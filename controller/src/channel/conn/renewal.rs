//! A connection made with a certificate that expired within the grace serves the renewal
//! only; a renewal asked for on a normal connection is answered the same way.

use jitgate_proto::{AgentMsg, ControllerMsg};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{ConnError, Wr, send};
use crate::app::App;
use crate::channel::reader;
use crate::fleet::RenewalError;

/// How long a connection made with an expired certificate waits for the renewal request.
const RENEW_ONLY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection made with a certificate that expired within the grace: `Welcome`, then the
/// agent's `RenewCertificate` and the answer, then the connection is closed. Nothing else
/// is sent (no settings, keys, policy, grants) and nothing else the agent sends is read
/// (reports, audit records): the agent reconnects with its renewed certificate for that.
pub(super) async fn renew_only(
    app: &App,
    agent: Uuid,
    vm: &str,
    public_key: &[u8],
    wr: &mut Wr,
    rx: &mut mpsc::Receiver<reader::Incoming>,
) -> Result<(), ConnError> {
    tracing::info!(%agent, %vm, "agent connected with an expired certificate within the grace: renewal only");
    send(
        wr,
        &ControllerMsg::Welcome {
            agent_id: agent,
            controller_unix_ms: jitgate_api::time::now_ms(),
        },
    )
    .await?;
    let deadline = tokio::time::Instant::now() + RENEW_ONLY_WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                ConnError::Protocol("expired certificate and no renewal request within 30 s".into())
            })?
            .ok_or_else(|| ConnError::Protocol("closed before renewing".into()))??;
        if let AgentMsg::RenewCertificate { csr_pem } = m {
            let answer = renewal_answer(app, agent, vm, public_key, &csr_pem, true).await?;
            send(wr, &answer).await?;
            return Ok(());
        }
        tracing::debug!(%agent, "message ignored: the connection serves the renewal only");
    }
}

/// Renews and answers: `Certificate`, or `RenewalRefused` with the reason.
pub(super) async fn renewal_answer(
    app: &App,
    agent: Uuid,
    vm: &str,
    public_key: &[u8],
    csr_pem: &str,
    expired: bool,
) -> Result<ControllerMsg, ConnError> {
    match app
        .fleet
        .renew_certificate(agent, vm, public_key, csr_pem, expired)
        .await
    {
        Ok((certificate_pem, ca_bundle_pem)) => Ok(ControllerMsg::Certificate {
            certificate_pem,
            ca_bundle_pem,
        }),
        Err(RenewalError::Refused(reason)) => Ok(ControllerMsg::RenewalRefused { reason }),
        Err(RenewalError::Store(e)) => Err(ConnError::Store(e)),
    }
}
