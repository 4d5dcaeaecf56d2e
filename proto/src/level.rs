//! Protocol levels: what each side of a connection may send the other, and the keepalive
//! rules that depend on the level (docs/protocol.md "Levels" and "Keepalive").
//!
//! Each level adds messages or changes a rule; a peer learns the other's level at connect
//! ([`AgentMsg::HelloV2`](crate::AgentMsg::HelloV2), [`ControllerMsg::Level`](crate::ControllerMsg::Level))
//! and sends only what that level knows.

/// The protocol level this build speaks (docs/protocol.md "Levels"). An agent announces its
/// level in [`AgentMsg::HelloV2`](crate::AgentMsg::HelloV2); an agent that sends the older [`AgentMsg::Hello`](crate::AgentMsg::Hello) is at
/// level 1. The controller sends a message only to agents whose level knows it.
pub const PROTOCOL_LEVEL: u32 = 12;

/// The first level that understands [`ControllerMsg::ScheduledGrant`](crate::ControllerMsg::ScheduledGrant), [`Outcome::Scheduled`](crate::message::Outcome::Scheduled)
/// and [`AgentMsg::ScheduledGrants`](crate::AgentMsg::ScheduledGrants). Level 1 agents apply every grant at receipt.
pub const LEVEL_SCHEDULED_GRANTS: u32 = 2;

/// The first level that understands [`ControllerMsg::Settings`](crate::ControllerMsg::Settings): the cluster's agent
/// endpoints and the ping interval its silence limit follows. Older agents are pinged every
/// 15 s and give up after 45 s of silence.
pub const LEVEL_SETTINGS: u32 = 3;

/// The first level that understands [`ControllerMsg::KeyAnnouncement`](crate::ControllerMsg::KeyAnnouncement) and
/// [`ControllerMsg::KeyRetirement`](crate::ControllerMsg::KeyRetirement) and answers them with [`AgentMsg::KeyResult`](crate::AgentMsg::KeyResult). Older
/// agents cannot follow a grant-signing key rotation (docs/operations.md, "Rotation").
pub const LEVEL_KEY_ROTATION: u32 = 4;

/// The first level that understands [`ControllerMsg::LimitedGrant`](crate::ControllerMsg::LimitedGrant): grants that admit at
/// most N new connections. An older agent would apply such a grant unlimited, so it is
/// never sent one.
pub const LEVEL_CONNECTION_LIMITS: u32 = 5;

/// The first level that renews its TLS certificate over the channel: it sends
/// [`AgentMsg::RenewCertificate`](crate::AgentMsg::RenewCertificate) and understands [`ControllerMsg::Certificate`](crate::ControllerMsg::Certificate) and
/// [`ControllerMsg::RenewalRefused`](crate::ControllerMsg::RenewalRefused). Only agents at this level are given short-lived
/// certificates; older agents keep the long ones they were enrolled with.
pub const LEVEL_CERT_RENEWAL: u32 = 6;

/// The first level that reports where the program runs on each interface: the controller
/// announces its own level with [`ControllerMsg::Level`](crate::ControllerMsg::Level) right after `Welcome`/`Settings`,
/// and an agent told a level at least this sends [`AgentMsg::Hooks`](crate::AgentMsg::Hooks) (never to an older
/// controller, which could not decode it).
pub const LEVEL_HOOK_REPORTS: u32 = 7;

/// At most this many interfaces in [`AgentMsg::Hooks`](crate::AgentMsg::Hooks) (more are cut, not refused).
pub const MAX_HOOK_INTERFACES: usize = 64;
/// At most this many programs ahead of jitgate per interface in [`AgentMsg::Hooks`](crate::AgentMsg::Hooks).
pub const MAX_PROGRAMS_AHEAD: usize = 16;
/// Interface and program names in [`AgentMsg::Hooks`](crate::AgentMsg::Hooks) are cut to this many characters.
pub const MAX_HOOK_NAME: usize = 64;
/// A hook problem's reason is cut to this many characters.
pub const MAX_HOOK_REASON: usize = 256;

/// The first level that helps a controller whose database went back in time (a restore from
/// a backup, a promoted replica that lacks the last commits): it sends [`AgentMsg::HelloV3`](crate::AgentMsg::HelloV3)
/// (its applied policy version beside its other marks) and understands
/// [`ControllerMsg::AuditResend`](crate::ControllerMsg::AuditResend) (send the audit records after a seq again).
pub const LEVEL_AUDIT_RESEND: u32 = 8;

/// The first level that understands [`ControllerMsg::Closing`](crate::ControllerMsg::Closing): the controller says why it
/// ends the connection (the agent was revoked) before it closes it, and the agent logs the
/// reason and shows it in `jit-agent status`. Older agents see a bare close.
pub const LEVEL_CLOSE_REASON: u32 = 9;

/// The first level whose pings are one way: an agent at this level does not answer
/// [`ControllerMsg::Ping`](crate::ControllerMsg::Ping) with [`AgentMsg::Pong`](crate::AgentMsg::Pong) when its controller announced this level
/// or later with [`ControllerMsg::Level`](crate::ControllerMsg::Level), and such a controller does not expect it (it
/// hears the agent's status report every [`STATUS_REPORT_EVERY`] and lets it go after
/// [`QUIET_AGENT_SILENCE`] without a frame). The ping exists so that the agent notices a
/// frozen controller; the pong told the controller what the status reports already tell it,
/// at 10 000 agents pinged every 2 s 5 000 frames a second the controller read for nothing.
pub const LEVEL_QUIET_PINGS: u32 = 10;

/// The first level pinged every half of its silence limit instead of every third: a
/// controller at this level sends an agent at this level `Settings.ping_every_ms` of
/// [`SPARSE_PINGS_EVERY`] × `agent_ping_seconds`, and the agent, once the controller announced
/// this level or later with [`ControllerMsg::Level`](crate::ControllerMsg::Level), leaves it
/// after [`SPARSE_SILENT_PINGS`] silent intervals. The silence limit, and so the failover of a
/// frozen controller, stays what it was (3 × `agent_ping_seconds`); a third of the pings go
/// (at 10 000 agents, writing the pings was about half of the idle controller's CPU). The
/// slack a late ping has before the agent leaves falls from two intervals to one (3 s).
/// No new message.
pub const LEVEL_SPARSE_PINGS: u32 = 11;

/// The first level that reports each grant's connection limit: an agent told a controller
/// level at least this sends [`AgentMsg::GrantsWithLimits`](crate::AgentMsg::GrantsWithLimits)
/// instead of [`AgentMsg::Grants`](crate::AgentMsg::Grants) (never to an older controller,
/// which could not decode it). A local break-glass grant's limit is known to its host alone;
/// the controller records it with the grant (activity log, `access.break_glass`, the
/// connections view).
pub const LEVEL_GRANT_LIMITS: u32 = 12;

/// The silence limit, on both sides, is this many ping intervals (level 3 and later; from
/// [`LEVEL_QUIET_PINGS`] on the controller waits for the agent's status reports instead;
/// from [`LEVEL_SPARSE_PINGS`] on the agent waits [`SPARSE_SILENT_PINGS`] longer intervals).
pub const SILENT_PINGS: u32 = 3;

/// From [`LEVEL_SPARSE_PINGS`] on, an agent leaves a controller silent for this many ping
/// intervals, each [`SPARSE_PINGS_EVERY`] times the configured one: the same silence limit.
pub const SPARSE_SILENT_PINGS: u32 = 2;

/// From [`LEVEL_SPARSE_PINGS`] on, the ping interval is this many times `agent_ping_seconds`
/// (as a fraction: 3/2), so that [`SPARSE_SILENT_PINGS`] of them last [`SILENT_PINGS`] of the
/// configured ones.
pub const SPARSE_PINGS_EVERY: (u32, u32) = (SILENT_PINGS, SPARSE_SILENT_PINGS);

/// How often an agent sends its status report (a heartbeat).
pub const STATUS_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a controller waits for any frame from an agent whose pings are one way
/// ([`LEVEL_QUIET_PINGS`]): three status reports and a margin.
pub const QUIET_AGENT_SILENCE: std::time::Duration = std::time::Duration::from_secs(35);

/// Whether an agent at [`LEVEL_QUIET_PINGS`] or later answers a ping from a controller that
/// announced `controller_level` (0: none announced, an older controller that expects a pong).
pub fn agent_answers_pings(controller_level: u32) -> bool {
    controller_level < LEVEL_QUIET_PINGS
}

/// The ping interval a controller configured to ping every `ping_every`
/// (`agent_ping_seconds`) uses for an agent at `agent_level`, and tells it in `Settings`.
pub fn ping_interval(ping_every: std::time::Duration, agent_level: u32) -> std::time::Duration {
    if agent_level >= LEVEL_SPARSE_PINGS {
        ping_every * SPARSE_PINGS_EVERY.0 / SPARSE_PINGS_EVERY.1
    } else {
        ping_every
    }
}

/// How many silent ping intervals make an agent leave a controller that announced
/// `controller_level` (0: none announced yet, or an older controller that never does).
pub fn silent_pings(controller_level: u32) -> u32 {
    if controller_level >= LEVEL_SPARSE_PINGS {
        SPARSE_SILENT_PINGS
    } else {
        SILENT_PINGS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sparse_pings_keep_the_silence_limit_with_a_third_fewer_pings() {
        let configured = Duration::from_secs(2);
        // Older agents, or an older controller: every 2 s, three of them.
        assert_eq!(ping_interval(configured, LEVEL_QUIET_PINGS), configured);
        assert_eq!(silent_pings(LEVEL_QUIET_PINGS), 3);
        assert_eq!(silent_pings(0), 3);
        // Level 11 on both sides: every 3 s, two of them: the same 6 s.
        let sparse = ping_interval(configured, LEVEL_SPARSE_PINGS);
        assert_eq!(sparse, Duration::from_secs(3));
        assert_eq!(
            sparse * silent_pings(LEVEL_SPARSE_PINGS),
            configured * SILENT_PINGS
        );
        assert_eq!(
            ping_interval(Duration::from_secs(1), PROTOCOL_LEVEL),
            Duration::from_millis(1_500)
        );
    }

    #[test]
    fn pings_are_answered_below_level_10_only() {
        assert!(agent_answers_pings(0));
        assert!(agent_answers_pings(LEVEL_CLOSE_REASON));
        assert!(!agent_answers_pings(LEVEL_QUIET_PINGS));
        assert!(!agent_answers_pings(PROTOCOL_LEVEL));
    }
}
