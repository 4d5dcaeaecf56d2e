//! Grant-signing keys as administrators see them (`GET /api/v1/keys`): their states and
//! times, and during a rotation which active agents have acknowledged the announced key.
//! Never any private material, nor where it is kept.

use serde::{Deserialize, Serialize};

use crate::wire::wire_enum;

wire_enum! {
    /// Where a grant-signing key is in its life.
    pub enum GrantKeyState("grant-signing key state", Other) {
        /// Signs grants, revocations and policies.
        Current = "current",
        /// Announced to agents; becomes current at the switch.
        Next = "next",
        /// Refused by agents that were told; its private half is destroyed.
        Retired = "retired",
    }
}

wire_enum! {
    /// Where an active agent stands in the rotation under way.
    pub enum AgentKeyState("agent key state", Other) {
        /// It holds the announced key.
        Acknowledged = "acknowledged",
        /// Connected, has not answered yet.
        Waiting = "waiting",
        /// Offline: it is sent the rotation when it returns.
        WillCatchUp = "willCatchUp",
        /// Its protocol level cannot follow a rotation: after the switch it refuses every
        /// grant until it is upgraded and re-enrolled.
        TooOld = "tooOld",
    }
}

/// An active agent that has not acknowledged the announced key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyAgent {
    pub agent_id: String,
    pub virtual_machine: String,
    /// The protocol level of its last `Hello`.
    pub protocol: i64,
    pub online: bool,
    pub state: AgentKeyState,
}

/// One grant-signing key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GrantKey {
    pub key_id: String,
    pub state: GrantKeyState,
    pub created_time_utc: String,
    /// When it was announced to agents (keys made by a rotation; the first key never was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_time_utc: Option<String>,
    /// When it became the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_time_utc: Option<String>,
    /// Announced keys: how many agents acknowledged the announcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<u64>,
    /// The announced key (state `next`): the active agents that have not acknowledged it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_acknowledged: Vec<KeyAgent>,
}

/// `GET /api/v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// Every key the cluster has used, oldest first.
    pub keys: Vec<GrantKey>,
    /// The key announced, while a rotation is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_to: Option<String>,
    /// How long after its announcement the leader switches to a key that not every active
    /// agent acknowledged (`[keys] switch_grace_seconds`).
    pub switch_grace_seconds: u64,
    /// During a rotation: when the grace ends (the switch comes sooner once every active
    /// agent acknowledged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_due_time_utc: Option<String>,
    /// During a rotation: the live controllers of the cluster that lack the announced key's
    /// private half (their `/readyz` fails); the automatic switch waits for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers_lacking_key: Vec<String>,
}
