//! `bench dataplane`, connection limits: the per-packet cost of a grant with
//! `maxConnections` against an unlimited one, beside the same run's floor.

use super::{Bench, ETH, frame};
use jitgate_agent::{BootInstant, GrantId, GrantSpec, XDP_DROP, XDP_PASS};
use jitgate_common::{MaxConnections, Port, Protocol, SourcePrefix};
use jitgate_tests::frames::TCP_ACK;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// A pair with no limited grant at all (the path as before).
const PLAIN: u16 = 2223;
/// A pair with a limited grant: `LIMITED` is set on its slot.
const LIMITED: u16 = 2222;
/// A limited grant whose one connection is used.
const USED_UP: u16 = 2224;

const SYN: u8 = 0x02;

fn host(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, last))
}

fn grant(b: &mut Bench, port: u16, src: IpAddr, limit: Option<MaxConnections>) {
    let end = BootInstant::now().saturating_add(Duration::from_secs(4 * 3600));
    let spec = GrantSpec {
        protocol: Protocol::Tcp,
        port: Port::new(port).expect("port"),
        source: SourcePrefix::host(src),
    };
    b.dp.add_limited_grant(GrantId::random(), spec, end, limit)
        .expect("add grant");
}

/// The section of the report: rows of (case, one packet, distinct packets), each with its
/// difference to the floor of the same run.
pub(super) fn section(b: &mut Bench, floor_one: f64, floor_many: f64) -> String {
    b.dp.set_protected(
        &["22/tcp", "2222/tcp", "2223/tcp", "2224/tcp"].map(|p| p.parse().expect("port")),
    )
    .expect("protect");
    let (plain, unlimited_on_limited, limited, used_up) = (host(10), host(11), host(12), host(13));
    grant(b, PLAIN, plain, None);
    grant(b, LIMITED, unlimited_on_limited, None);
    grant(b, LIMITED, limited, Some(MaxConnections::MAX));
    grant(b, USED_UP, used_up, Some(MaxConnections::ONE));
    b.run(ETH, &frame(used_up, USED_UP, SYN, 1), 1, XDP_PASS);

    // New connections: distinct source ports, each run once (every one takes a slot).
    let n = b.distinct.min(60_000) as u16;
    let syns = |src: IpAddr, port: u16| -> Vec<Vec<u8>> {
        (0..n).map(|i| frame(src, port, SYN, 2000 + i)).collect()
    };
    let new_plain = b.many(ETH, &syns(plain, PLAIN), XDP_PASS, false);
    let new_unl = b.many(ETH, &syns(unlimited_on_limited, LIMITED), XDP_PASS, false);
    let new_lim = b.many(ETH, &syns(limited, LIMITED), XDP_PASS, false);
    // The same SYN again and again: for the limited grant, a retransmission of a connection
    // that holds a slot.
    let re_plain = b.one(ETH, &frame(plain, PLAIN, SYN, 1), XDP_PASS);
    let re_lim = b.one(ETH, &frame(limited, LIMITED, SYN, 1), XDP_PASS);
    // Packets of admitted flows (the steady state of a session).
    let flow_plain = b.one(ETH, &frame(plain, PLAIN, TCP_ACK, 2000), XDP_PASS);
    let flow_lim = b.one(ETH, &frame(limited, LIMITED, TCP_ACK, 2000), XDP_PASS);
    // Refused: the limit is used up (a new source port every time would be the same path).
    let refused = b.one(ETH, &frame(used_up, USED_UP, SYN, 2), XDP_DROP);

    let row = |case: &str, one: f64, many: f64| -> String {
        let f = |v: f64, floor: f64| {
            if v.is_nan() {
                "–".to_string()
            } else {
                format!("{v:.1} ({:+.1})", v - floor)
            }
        };
        format!(
            "| {case} | {} | {} |\n",
            f(one, floor_one),
            f(many, floor_many)
        )
    };
    let mut out = String::new();
    out.push_str(
        "\nConnection limits (IPv4 host grants; ns per packet, in brackets the difference to this run's floor; \
         new connections: distinct source ports, each run once, every one taking a slot of a limit of 65 535):\n\n",
    );
    out.push_str("| case | one packet (ns) | distinct new connections (ns) |\n|---|---:|---:|\n");
    out.push_str(&row(
        "new connection, unlimited grant, pair without limits",
        re_plain,
        new_plain,
    ));
    out.push_str(&row(
        "new connection, unlimited grant on a pair with a limited grant",
        f64::NAN,
        new_unl,
    ));
    out.push_str(&row(
        "new connection, limited grant (slot taken; one packet: retransmitted SYN)",
        re_lim,
        new_lim,
    ));
    out.push_str(&row("admitted flow, unlimited grant", flow_plain, f64::NAN));
    out.push_str(&row("admitted flow, limited grant", flow_lim, f64::NAN));
    out.push_str(&row("refused: limit used up (drop)", refused, f64::NAN));
    out.push_str(&format!(
        "\nA limited grant's new connection costs {:+.1} ns against an unlimited one on a pair without limits \
         (the `JG_CONN_LIMIT` lookup, the atomic add, the `JG_LIM_SYNS` lookup and insert); an unlimited grant \
         on a pair that has a limited one pays {:+.1} ns (one lookup that misses). Packets of admitted flows \
         never look at the limit ({:+.1} ns).\n",
        new_lim - new_plain,
        new_unl - new_plain,
        flow_lim - flow_plain
    ));
    out
}
