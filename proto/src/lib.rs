//! The controller ↔ agent wire protocol (docs/protocol.md).
//!
//! - [`frame`]: length-prefixed, versioned frames; the size limit is checked before anything
//!   is allocated, and a bad frame is an error, never a panic.
//! - [`audit`]: the activity log's entry hash, signed checkpoints and offline verification.
//! - [`audit_kind`]: the kinds of record in an agent's audit log.
//! - [`endpoint`]: a controller's agent endpoint (`host:port`), as agents dial it.
//! - [`keys`]: grant-signing key ids and the signed bodies of a key rotation.
//! - [`level`]: protocol levels, and the keepalive rules that depend on them.
//! - [`message`]: what each side sends.
//! - [`signed`]: grant, revocation and policy bodies signed with the controller's Ed25519
//!   key. The signature covers the exact bytes that travel, so nothing is re-encoded before
//!   verification.
//!
//! Encoding: postcard (serde). bincode 3 on the registry is a tombstone and bincode 2 is
//! unmaintained (RUSTSEC-2025-0141); postcard is maintained, compact, and has a stable
//! documented wire format.

pub mod audit;
pub mod audit_kind;
pub mod endpoint;
pub mod frame;
pub mod keys;
pub mod level;
pub mod message;
pub mod signed;
#[doc(hidden)]
pub mod testing;

pub use audit_kind::AuditKind;
pub use endpoint::{Endpoint, EndpointError};
pub use frame::{FrameError, MAX_FRAME, VERSION, read_frame, write_frame};
pub use keys::{KeyAnnouncementBody, KeyId, KeyRetirementBody, KeyStep};
pub use level::{
    LEVEL_AUDIT_RESEND, LEVEL_CERT_RENEWAL, LEVEL_CLOSE_REASON, LEVEL_CONNECTION_LIMITS,
    LEVEL_GRANT_LIMITS, LEVEL_HOOK_REPORTS, LEVEL_KEY_ROTATION, LEVEL_QUIET_PINGS,
    LEVEL_SCHEDULED_GRANTS, LEVEL_SETTINGS, LEVEL_SPARSE_PINGS, PROTOCOL_LEVEL,
    QUIET_AGENT_SILENCE, SILENT_PINGS, SPARSE_PINGS_EVERY, SPARSE_SILENT_PINGS,
    STATUS_REPORT_EVERY, agent_answers_pings, ping_interval, silent_pings,
};
pub use message::{AgentMsg, ControllerMsg};
pub use message::{
    CloseReason, HookKind, HookMode, HookProblem, InterfaceHook, MAX_CERT_PEM, MAX_ENDPOINTS,
    ProgramAhead,
};
pub use signed::{
    GrantBody, LimitedGrantBody, PolicyBody, RevokeBody, ScheduledGrantBody, Signed, VerifyError,
};
