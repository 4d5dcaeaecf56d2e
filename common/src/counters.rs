//! Per-CPU verdict counters. The index of each counter in the `JG_COUNTERS` per-CPU array.

/// Why a packet got its verdict. One per-CPU `u64` counter per variant.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassedNonIp = 0,
    /// IP, but neither TCP nor UDP (ICMP, ESP, ...).
    PassedNotTcpUdp = 1,
    /// TCP/UDP to a (protocol, port) that is not protected.
    PassedUnprotected = 2,
    /// A non-first fragment: its first fragment carried the ports and got the verdict.
    PassedFragment = 3,
    /// Protected, and an active grant covers the source.
    AllowedByGrant = 4,
    /// Protected, and the packet belongs to a flow admitted under a grant that is still active.
    AllowedByFlow = 5,
    /// Protected, the grant has ended, the port is `keep` and the flow is not idle.
    AllowedKeptFlow = 6,
    /// Protected, and no grant covers the source.
    DeniedNoGrant = 7,
    /// Protected, and every grant that covers the source has ended.
    DeniedExpired = 8,
    /// Could not be parsed far enough to be sure it is not for a protected port.
    DroppedMalformed = 9,
    /// An IPv6 extension-header chain longer than the parser's bound.
    DroppedExtChain = 10,
    /// A TCP fragment at offset 8 bytes (RFC 1858 overlapping-fragment attack).
    DroppedTinyFragment = 11,
    /// Events written to the ring buffer.
    EventsSent = 12,
    /// Denial events suppressed by the per-CPU budget or the per-source limit.
    EventsSuppressed = 13,
    /// Events lost because the ring buffer was full.
    EventsLost = 14,
    /// A flow could not be recorded (flow table insert failed).
    FlowInsertFailed = 15,
    /// Protected, an active grant covers the source, but it has admitted as many new
    /// connections as its limit allows. Absent on maps adopted from layout 2 or older
    /// (their counter array is shorter): read as 0 there until the maps are recreated.
    DeniedConnLimit = 16,
}

impl Counter {
    /// Number of counters; the size of the per-CPU counter array.
    pub const COUNT: u32 = 17;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::PassedNonIp,
        Counter::PassedNotTcpUdp,
        Counter::PassedUnprotected,
        Counter::PassedFragment,
        Counter::AllowedByGrant,
        Counter::AllowedByFlow,
        Counter::AllowedKeptFlow,
        Counter::DeniedNoGrant,
        Counter::DeniedExpired,
        Counter::DroppedMalformed,
        Counter::DroppedExtChain,
        Counter::DroppedTinyFragment,
        Counter::EventsSent,
        Counter::EventsSuppressed,
        Counter::EventsLost,
        Counter::FlowInsertFailed,
        Counter::DeniedConnLimit,
    ];

    /// Stable snake_case name, used in JSON output and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassedNonIp => "passed_non_ip",
            Counter::PassedNotTcpUdp => "passed_not_tcp_udp",
            Counter::PassedUnprotected => "passed_unprotected",
            Counter::PassedFragment => "passed_fragment",
            Counter::AllowedByGrant => "allowed_by_grant",
            Counter::AllowedByFlow => "allowed_by_flow",
            Counter::AllowedKeptFlow => "allowed_kept_flow",
            Counter::DeniedNoGrant => "denied_no_grant",
            Counter::DeniedExpired => "denied_expired",
            Counter::DroppedMalformed => "dropped_malformed",
            Counter::DroppedExtChain => "dropped_ext_chain",
            Counter::DroppedTinyFragment => "dropped_tiny_fragment",
            Counter::EventsSent => "events_sent",
            Counter::EventsSuppressed => "events_suppressed",
            Counter::EventsLost => "events_lost",
            Counter::FlowInsertFailed => "flow_insert_failed",
            Counter::DeniedConnLimit => "denied_conn_limit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
    }
}
