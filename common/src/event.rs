//! Records the XDP program writes to the `JG_EVENTS` ring buffer.

/// What happened.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new flow (TCP SYN, a UDP 5-tuple's first packet, or the first packet seen of a TCP
    /// connection that started before the grant) was admitted under a grant.
    Admitted = 1,
    /// A packet to a protected port was dropped (rate-limited per CPU and per source).
    Denied = 2,
    /// A new flow took the last connection a limited grant allows (written right after that
    /// flow's `Admitted`): from now on the grant admits no new connection.
    LimitReached = 3,
}

impl EventKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(EventKind::Admitted),
            2 => Some(EventKind::Denied),
            3 => Some(EventKind::LimitReached),
            _ => None,
        }
    }
}

/// `Event::family` values.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// One ring-buffer record. Addresses are in network byte order; an IPv4 address occupies the
/// first four bytes of its field. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_BOOTTIME, nanoseconds.
    pub ts_ns: u64,
    /// Id of the grant that admitted the flow; zero for a denial.
    pub grant_id: [u8; 16],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// An [`EventKind`].
    pub kind: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// The [`crate::Counter`] index that describes the verdict (for denials: no grant or
    /// expired).
    pub reason: u8,
    pub ifindex: u32,
    pub _pad: u32,
}

impl Event {
    pub const SIZE: usize = core::mem::size_of::<Event>();
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}

const _: () = assert!(Event::SIZE == 72);
