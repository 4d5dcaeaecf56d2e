//! Grant-signing key rotation on one connection: the steps the agent has not answered, sent
//! once each, and its answers recorded.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use jitgate_api::Operation;
use jitgate_proto::message::Outcome;
use jitgate_proto::{KeyId, KeyStep, LEVEL_KEY_ROTATION};

use super::{Conn, ConnError, Refused, Wr, send};

impl Conn {
    /// The key that signs now (a rotation may change it between two messages).
    pub(super) fn key(&self) -> Result<Arc<SigningKey>, ConnError> {
        self.app
            .keys
            .signer()
            .map_err(|e| ConnError::Sign(e.to_string()))
    }

    pub(super) async fn load_key_acks(&mut self) -> Result<(), ConnError> {
        for (k, s) in crate::store::grant_keys::acks_of(self.app.db.pool(), &self.agent_s).await? {
            let Some(step) = KeyStep::parse(&s) else {
                continue;
            };
            if let Ok(id) = k.parse::<KeyId>() {
                self.key_acks.insert((id, step));
            }
        }
        Ok(())
    }

    /// The rotation steps this agent has not answered, each once per connection, to agents
    /// that understand them.
    pub(super) async fn send_keys(&mut self, wr: &mut Wr) -> Result<(), ConnError> {
        if self.protocol < LEVEL_KEY_ROTATION {
            return Ok(());
        }
        let snap = self.app.keys.snapshot();
        let mut retired = false;
        for s in &snap.steps {
            let k = (s.key_id, s.step);
            if !s.for_agent_enrolled_at(self.enrolled_ms)
                || self.key_acks.contains(&k)
                || !self.key_sent.insert(k)
            {
                continue;
            }
            tracing::info!(agent = %self.agent, key = %s.key_id, step = s.step.as_str(), "key rotation step sent");
            send(wr, &s.msg).await?;
            retired |= s.step == KeyStep::Retired;
        }
        if retired && self.policy_seq >= 0 {
            // The agent keeps the signed policy for its restarts: the same policy again,
            // signed by the key it now pins.
            self.policy_seq = -1;
            self.send_policy(wr).await?;
        }
        Ok(())
    }

    pub(super) async fn key_result(
        &mut self,
        key_id: KeyId,
        step: KeyStep,
        outcome: Outcome,
    ) -> Result<(), ConnError> {
        match outcome {
            Outcome::Applied { .. } | Outcome::AlreadyApplied => {
                tracing::info!(agent = %self.agent, key = %key_id, step = step.as_str(), "key rotation step acknowledged");
                let mut w = self.app.db.begin().await?;
                crate::store::grant_keys::ack(
                    &mut w,
                    &self.agent_s,
                    &key_id.to_string(),
                    step.as_str(),
                )
                .await?;
                w.commit().await?;
                self.key_acks.insert((key_id, step));
            }
            Outcome::Rejected { reason } => {
                tracing::warn!(agent = %self.agent, key = %key_id, step = step.as_str(), %reason, "key rotation step rejected by the agent");
                self.refused(
                    Operation::AgentResult,
                    serde_json::json!({"kind": Refused::Key.as_str(), "keyId": key_id.to_string(), "step": step.as_str(), "reason": reason}),
                )
                .await?;
            }
            Outcome::Scheduled { .. } => {}
        }
        Ok(())
    }
}
