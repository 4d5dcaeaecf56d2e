//! `--only round-steps`: where a notification delivery round's time goes under load. One
//! controller with one healthy sink (the throughput rows' healthy variant), pending initiates
//! from `--concurrency` callers (each writes one event); each round's step times come from its
//! debug line (`outbox/worker.rs`, "notification round committed", and the fan-out's
//! "notifications fanned out"), collected by a tracing layer of this bench, and are printed
//! as median / p90 / mean per step. A diagnostic for working on the round: compare two builds
//! on the same machine, one after the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use jitgate_controller::outbox::sender::Sender;
use tracing_subscriber::Layer;

use crate::notify::{PENDING, drained, variant};
use crate::receivers::{Answer, Pki, Receiver};
use crate::{Op, run_phase};

/// The messages whose fields are a round's steps.
const ROUND_LINES: [&str; 2] = ["notification round committed", "notifications fanned out"];

/// The steps printed, in the round's order (milliseconds, then counts).
const STEPS: [&str; 12] = [
    "wait_ms",
    "record_ms",
    "claim_ms",
    "fan_out_ms",
    "read_ms",
    "match_ms",
    "keys_ms",
    "write_ms",
    "commit_ms",
    "recorded",
    "claimed",
    "events",
];

/// Each round's numeric fields, by name, as the layer saw them.
#[derive(Clone, Default)]
pub(crate) struct Rounds(Arc<Mutex<Vec<HashMap<String, f64>>>>);

impl Rounds {
    /// The layer that records rounds into `self`: the outbox's debug events only.
    pub(crate) fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let only = tracing_subscriber::filter::Targets::new()
            .with_target("jitgate_controller::outbox", tracing::Level::DEBUG);
        Recorder(self.clone()).with_filter(only)
    }

    fn take(&self) -> Vec<HashMap<String, f64>> {
        self.0
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default()
    }
}

struct Recorder(Rounds);

/// One event's numeric fields, and whether its message is a round's.
struct Fields(HashMap<String, f64>, bool);

impl tracing::field::Visit for Fields {
    fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
        self.0.insert(f.name().to_string(), v);
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        self.0.insert(f.name().to_string(), v as f64);
    }
    fn record_i64(&mut self, f: &tracing::field::Field, v: i64) {
        self.0.insert(f.name().to_string(), v as f64);
    }
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let m = format!("{v:?}");
            self.1 = ROUND_LINES.contains(&m.as_str());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields(HashMap::new(), false);
        e.record(&mut f);
        if f.1
            && let Ok(mut g) = (self.0).0.lock()
        {
            g.push(f.0);
        }
    }
}

/// Runs the load and prints the steps' table on stdout.
pub(crate) async fn print(rounds: &Rounds, n: u64, conc: u64, vms: u64) -> Result<()> {
    let remote = Sender::start()?;
    let (pki, healthy) = remote
        .run(async {
            let pki = Pki::new("bench round-steps CA");
            let healthy = Receiver::https(&pki, "127.0.0.1").await;
            (pki, healthy)
        })
        .await
        .context("the receiver's thread")?;
    healthy.answer(Answer::Status(200));
    let v = variant("one healthy sink", &pki, Some(&healthy), vms, conc).await?;
    let me = |total| {
        run_phase(
            &v.client,
            &v.base,
            &v.requester,
            total,
            conc,
            &Op::Me,
            0,
            vms,
            None,
        )
    };
    me(conc * 4).await;
    // A short warm-up of the round itself, then the measured load.
    let warm = (n / 10).max(conc);
    eprintln!("pending initiate x{warm} (warm-up) ...");
    run_phase(
        &v.client,
        &v.base,
        &v.requester,
        warm,
        conc,
        &PENDING,
        0,
        vms,
        None,
    )
    .await;
    drained(&healthy, warm as usize, Duration::from_secs(120)).await?;
    rounds.take();
    eprintln!("pending initiate x{n}, one healthy sink ...");
    let (_, errors, wall) = run_phase(
        &v.client,
        &v.base,
        &v.requester,
        n,
        conc,
        &PENDING,
        warm,
        vms,
        None,
    )
    .await;
    let seen = rounds.take();
    drained(&healthy, (warm + n) as usize, Duration::from_secs(120)).await?;
    v.server.stop().await;
    let recording = seen
        .iter()
        .filter(|r| r.get("recorded").copied().unwrap_or(0.0) > 0.0)
        .count();
    println!(
        "{n} pending initiates ({errors} errors) from {conc} callers in {:.1} s ({:.0}/s), one healthy sink; {} rounds ({recording} recording outcomes), {} fan-outs\n",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64().max(1e-9),
        seen.iter().filter(|r| r.contains_key("wait_ms")).count(),
        seen.iter().filter(|r| r.contains_key("events")).count(),
    );
    println!("| step | median | p90 | mean | rounds with it |\n|---|---:|---:|---:|---:|");
    for step in STEPS {
        let mut v: Vec<f64> = seen.iter().filter_map(|r| r.get(step).copied()).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "| {step} | {:.2} | {:.2} | {:.2} | {} |",
            at(0.5),
            at(0.9),
            v.iter().sum::<f64>() / v.len().max(1) as f64,
            v.len()
        );
    }
    Ok(())
}
