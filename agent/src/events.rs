//! Events from the kernel program's ring buffer, decoded.

use crate::clock::BootInstant;
use crate::error::Error;
use crate::grant::GrantId;
use aya::maps::{MapData, RingBuf};
use jitgate_common::{Counter, Event, EventKind, Protocol, event::FAMILY_V4};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tokio::io::unix::AsyncFd;

/// A decoded data-plane event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneEvent {
    pub kind: EventKind,
    pub at: BootInstant,
    pub protocol: Protocol,
    pub source: IpAddr,
    pub source_port: u16,
    pub destination: IpAddr,
    pub destination_port: u16,
    /// The grant that admitted the flow (`None` for denials).
    pub grant: Option<GrantId>,
    /// For denials: `DeniedNoGrant` or `DeniedExpired`.
    pub reason: Option<Counter>,
    pub ifindex: u32,
}

impl DataplaneEvent {
    /// Decodes one ring-buffer record; `None` for a record of the wrong size or with values
    /// the kernel never writes (it is skipped, never trusted).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Event::SIZE {
            return None;
        }
        // SAFETY: length checked; Event is plain old data with no invalid bit patterns.
        let e: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let kind = EventKind::from_u8(e.kind)?;
        let protocol = Protocol::from_number(e.proto)?;
        let addr = |b: [u8; 16]| -> IpAddr {
            if e.family == FAMILY_V4 {
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(b))
            }
        };
        let grant = GrantId::from_bytes(e.grant_id);
        Some(DataplaneEvent {
            kind,
            at: BootInstant(e.ts_ns),
            protocol,
            source: addr(e.saddr),
            source_port: e.sport,
            destination: addr(e.daddr),
            destination_port: e.dport,
            grant: (!grant.is_nil()).then_some(grant),
            reason: Counter::ALL.get(usize::from(e.reason)).copied(),
            ifindex: e.ifindex,
        })
    }
}

/// The ring buffer. `drain` works anywhere; `next_batch` needs a tokio runtime.
pub struct EventStream {
    inner: Inner,
}

enum Inner {
    Plain(RingBuf<MapData>),
    Async(AsyncFd<RingBuf<MapData>>),
    /// Only while switching from Plain to Async.
    Empty,
}

fn read_all(ring: &mut RingBuf<MapData>, out: &mut Vec<DataplaneEvent>) {
    while let Some(item) = ring.next() {
        if let Some(e) = DataplaneEvent::decode(&item) {
            out.push(e);
        }
    }
}

impl EventStream {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        EventStream {
            inner: Inner::Plain(ring),
        }
    }

    /// Events already in the buffer, without waiting.
    pub fn drain(&mut self) -> Vec<DataplaneEvent> {
        let mut out = Vec::new();
        match &mut self.inner {
            Inner::Plain(r) => read_all(r, &mut out),
            Inner::Async(a) => read_all(a.get_mut(), &mut out),
            Inner::Empty => {}
        }
        out
    }

    /// Waits until at least one event is available and returns all that are.
    pub async fn next_batch(&mut self) -> Result<Vec<DataplaneEvent>, Error> {
        if let Inner::Plain(_) = self.inner
            && let Inner::Plain(ring) = std::mem::replace(&mut self.inner, Inner::Empty)
        {
            // SAFETY: the ring buffer owns its fd and lives as long as the AsyncFd.
            let fd = unsafe { AsyncFd::register(ring) }.map_err(|e| Error::Io(e.into()))?;
            self.inner = Inner::Async(fd);
        }
        let Inner::Async(fd) = &mut self.inner else {
            return Err(Error::MissingMap(jitgate_common::names::EVENTS));
        };
        loop {
            let mut guard = fd.readable_mut().await?;
            let mut out = Vec::new();
            read_all(guard.get_inner_mut(), &mut out);
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}
