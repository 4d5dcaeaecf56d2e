//! How late a booked grant opens: an enrolled agent receives signed bookings (from the
//! impostor endpoint, with the controller's key) 200 ms ahead of their start; the prober
//! times the first admitted packet after the start. The floor is the lateness of a bare tokio
//! `sleep_until` in this process, in the same run.

use crate::probe::{Prober, pct};
use jitgate_common::Port;
use jitgate_proto::message::{ControllerMsg, Outcome};
use jitgate_proto::{ScheduledGrantBody, Signed};
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::impostor::{Impostor, window_body};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bookings are sent this far ahead of their start.
const LEAD_MS: i64 = 200;
const PORT: u16 = 3389;

/// Lateness samples in ns, sorted: the door's and the bare timer's.
pub struct Lateness {
    pub door: Vec<f64>,
    pub floor: Vec<f64>,
}

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

pub fn measure(rounds: usize) -> Lateness {
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let (agent, imp) = Impostor::enrolled(&fleet, "--interface eth0 --protect 3389/udp");
    let p = Prober::start(
        &Fleet::ns_path(&fleet.ws),
        &Fleet::ns_path(&vm.ns),
        vm.v4,
        PORT,
    );
    let src = format!("{WS_V4}/32").parse().expect("source");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut floor = Vec::with_capacity(rounds);
    let mut door = Vec::with_capacity(rounds);
    rt.block_on(async {
        for _ in 0..rounds {
            let target = tokio::time::Instant::now() + Duration::from_millis(LEAD_MS as u64);
            tokio::time::sleep_until(target).await;
            floor.push((tokio::time::Instant::now() - target).as_nanos() as f64);
        }
        let mut s = imp.accept().await;
        let mut seq = s.seq_high_water + 10;
        for _ in 0..rounds {
            p.wait_closed();
            p.arm();
            let (t0, w0) = (p.now(), wall_ns());
            let start_ms = (w0 / 1_000_000) as i64 + 1 + LEAD_MS;
            let start_probe = t0 as i128 + (i128::from(start_ms) * 1_000_000 - w0);
            let mut g = window_body(s.agent, seq, PORT, src, 0, 0);
            g.protocol = jitgate_common::Protocol::Udp;
            g.port = Port::new(PORT).expect("port");
            g.start_unix_ms = start_ms;
            g.end_unix_ms = start_ms + 2_000;
            g.remaining_ms = (LEAD_MS + 2_000) as u64;
            let id = g.grant_id;
            let b = ScheduledGrantBody {
                grant: g,
                starts_in_ms: LEAD_MS as u64,
            };
            let signed = Signed::sign(&b, &imp.key).expect("sign");
            s.send(&ControllerMsg::ScheduledGrant(signed)).await;
            let first = p.wait_first();
            door.push((i128::from(first) - start_probe) as f64);
            // Scheduled, then Applied at the opening.
            for _ in 0..2 {
                match s.outcome_of(id, Duration::from_secs(5)).await {
                    Outcome::Scheduled { .. } | Outcome::Applied { .. } => {}
                    other => panic!("booking {id}: {other:?}\n{}", agent.log_text()),
                }
            }
            seq += 1;
            let revoked = s.revoke(&imp.key, id, seq).await;
            assert!(matches!(revoked, Outcome::Applied { .. }), "{revoked:?}");
            seq += 1;
        }
    });
    drop(p);
    door.sort_by(f64::total_cmp);
    floor.sort_by(f64::total_cmp);
    Lateness { door, floor }
}

/// The row for BENCHMARKS.md.
pub fn row(l: &Lateness) -> String {
    let ms = |ns: f64| ns / 1e6;
    let (d50, d99) = (ms(pct(&l.door, 0.5)), ms(pct(&l.door, 0.99)));
    let (f50, f99) = (ms(pct(&l.floor, 0.5)), ms(pct(&l.floor, 0.99)));
    format!(
        "| booked grant: start → first admitted packet, p50 / p99 ({} bookings sent {LEAD_MS} ms ahead, enrolled agent) | {d50:.2} / {d99:.2} ms (+{:.2} / +{:.2} ms over the floor) | {f50:.2} / {f99:.2} ms (bare tokio `sleep_until` lateness) | p99 ≤ 100 ms ({}) |\n",
        l.door.len(),
        d50 - f50,
        d99 - f99,
        if d99 <= 100.0 { "met" } else { "missed" }
    )
}
