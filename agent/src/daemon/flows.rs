//! Admitted flows as the agent tends them: sessions adopted at start (no lock-out), flows
//! handed to another grant or cut when theirs ends, and idle flows swept.

use crate::audit::AuditEvent;
use crate::clock::BootInstant;
use crate::dataplane::Dataplane;
use crate::grant::GrantId;
use crate::grant_table::GrantTable;
use crate::sockdiag::{self, TcpConn};
use jitgate_common::event::{FAMILY_V4, FAMILY_V6};
use jitgate_common::{FlowEntry, FlowKey, OnExpiry, Port, ProtectedPort, Protocol};
use jitgate_proto::AuditKind;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// What happens to a protected port's flows when their grant ends (`None`: not protected).
pub(super) fn on_expiry(
    protected: &[ProtectedPort],
    proto: Protocol,
    port: u16,
) -> Option<OnExpiry> {
    protected
        .iter()
        .find(|p| p.protocol == proto && p.port.get() == port)
        .map(|p| p.on_expiry)
}

fn address(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

fn conn(k: &FlowKey) -> TcpConn {
    TcpConn {
        local: SocketAddr::new(address(k.family, &k.daddr), u16::from_be_bytes(k.dport)),
        remote: SocketAddr::new(address(k.family, &k.saddr), u16::from_be_bytes(k.sport)),
    }
}

/// Flows admitted under any of `gone` (grants already out of the table): each is handed to
/// another running grant that covers it if there is one, otherwise removed and, for TCP, its
/// local socket destroyed. Returns how many were cut, per grant of `gone`.
pub(super) fn cut(dp: &mut Dataplane, table: &GrantTable, gone: &[GrantId]) -> Vec<usize> {
    let mut cut = vec![0; gone.len()];
    if gone.is_empty() {
        return cut;
    }
    let which: HashMap<[u8; 16], usize> = gone
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_bytes(), i))
        .collect();
    let now = BootInstant::now().0;
    let mut close = Vec::new();
    for (k, mut e) in dp.flows() {
        let Some(&i) = which.get(&e.grant_id) else {
            continue;
        };
        let other = Protocol::from_number(k.proto)
            .zip(Port::new(u16::from_be_bytes(k.dport)))
            .and_then(|(proto, port)| {
                table.covering(gone[i], proto, port, address(k.family, &k.saddr), now)
            });
        if let Some(other) = other {
            e.grant_id = other.id().to_bytes();
            e.grant_expires_ns = other.expires_boot_ns();
            let _ = dp.insert_flow(k, e);
            continue;
        }
        let _ = dp.remove_flow(&k);
        if k.proto == Protocol::Tcp.number() {
            close.push(conn(&k));
        }
        if let Some(n) = cut.get_mut(i) {
            *n += 1;
        }
    }
    if let Err(err) = sockdiag::destroy(&close) {
        tracing::warn!(error = %err, "could not close cut sessions");
    }
    cut
}

/// Drops flows nobody needs: idle `keep` flows and adopted sessions, and flows of ended
/// grants on `cut` ports.
pub(super) fn sweep(dp: &mut Dataplane, protected: &[ProtectedPort], idle: Duration) {
    let now = BootInstant::now().0;
    let idle = idle.as_nanos().min(u128::from(u64::MAX)) as u64;
    for (k, e) in dp.flows() {
        let ended = e.grant_expires_ns <= now;
        let idle_past = e.last_seen_ns.saturating_add(idle) <= now;
        let cut_port = on_expiry(
            protected,
            Protocol::from_number(k.proto).unwrap_or(Protocol::Tcp),
            u16::from_be_bytes(k.dport),
        ) != Some(OnExpiry::Keep);
        if idle_past && (ended || e.grant_expires_ns == u64::MAX) || ended && cut_port {
            let _ = dp.remove_flow(&k);
        }
    }
}

/// Established TCP sessions to protected ports become admitted flows, so that turning
/// enforcement on over SSH never cuts the session that did it.
pub(super) fn adopt_sessions(dp: &mut Dataplane, protected: &[ProtectedPort]) -> Vec<AuditEvent> {
    let tcp_ports: BTreeSet<u16> = protected
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.port.get())
        .collect();
    let conns = match sockdiag::established(|p| tcp_ports.contains(&p)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list established sessions to adopt");
            return Vec::new();
        }
    };
    let now = BootInstant::now().0;
    let mut events = Vec::new();
    for c in conns {
        let (family, saddr, daddr) = match (c.remote.ip(), c.local.ip()) {
            (IpAddr::V4(r), IpAddr::V4(l)) => {
                let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
                s[..4].copy_from_slice(&r.octets());
                d[..4].copy_from_slice(&l.octets());
                (FAMILY_V4, s, d)
            }
            (IpAddr::V6(r), IpAddr::V6(l)) => {
                // A v4-mapped socket sees v4 packets.
                match (r.to_ipv4_mapped(), l.to_ipv4_mapped()) {
                    (Some(r4), Some(l4)) => {
                        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
                        s[..4].copy_from_slice(&r4.octets());
                        d[..4].copy_from_slice(&l4.octets());
                        (FAMILY_V4, s, d)
                    }
                    _ => (FAMILY_V6, r.octets(), l.octets()),
                }
            }
            _ => continue,
        };
        let key = FlowKey {
            family,
            proto: Protocol::Tcp.number(),
            sport: c.remote.port().to_be_bytes(),
            dport: c.local.port().to_be_bytes(),
            _pad: [0; 2],
            saddr,
            daddr,
        };
        let entry = FlowEntry {
            admitted_at_ns: now,
            last_seen_ns: now,
            // No grant: the session predates enforcement. It lives until idle.
            grant_expires_ns: u64::MAX,
            grant_id: [0; 16],
        };
        if dp.insert_flow(key, entry).is_ok() {
            let mut e = AuditEvent::new(AuditKind::SessionAdopted, "agent");
            e.source = Some(c.remote.to_string());
            e.protocol = Some("tcp".into());
            e.port = Some(c.local.port());
            e.reason = Some("established before enforcement".into());
            events.push(e);
        }
    }
    events
}
