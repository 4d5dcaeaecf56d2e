//! The notification rows: initiates that each write a `request.pending_approval` event, on
//! three controllers alike but for their sinks (none, one healthy webhook receiver, one
//! receiver that never answers), 7 short rounds each, alternating; then the delivery lag
//! (arrival at the receiver minus the event's time) with the healthy sink at 1 000
//! requests/s. Receivers are the notification tests' recording HTTPS servers on 127.0.0.1,
//! run on a lower-priority thread to stand in for other hosts.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jitgate_api::{Role, Scope};
use jitgate_controller::ServerHandle;
use jitgate_controller::authz::Caller;
use jitgate_controller::outbox::sender::Sender;
use jitgate_controller::state::{self, Config, StateDir};
use jitgate_notify::{SecretName, SecretStore};
use serde_json::json;

use crate::receivers::{Answer, Pki, Receiver};
use crate::{Op, Row, run_phase, summarize};

/// Rounds of the throughput comparison.
const ROUNDS: usize = 7;

/// Each pending initiate on one of these VMs writes one event.
pub(crate) const PENDING: Op = Op::Initiate {
    prefix: "nvm",
    status: "PendingApproval",
};

/// One controller of the comparison.
pub(crate) struct Variant {
    name: &'static str,
    _tmp: tempfile::TempDir,
    pub(crate) server: ServerHandle,
    pub(crate) base: String,
    pub(crate) requester: String,
    pub(crate) client: reqwest::Client,
}

pub(crate) async fn variant(
    name: &'static str,
    pki: &Pki,
    sink: Option<&Receiver>,
    vms: u64,
    conc: u64,
) -> Result<Variant> {
    let tmp = tempfile::tempdir()?;
    let dir = StateDir(tmp.path().join("state"));
    std::fs::write(tmp.path().join("ca.pem"), &pki.ca_pem)?;
    SecretStore::open(tmp.path().join("secrets"))?
        .put(&"hook".parse::<SecretName>()?, b"bench-secret")?;
    let mut text = format!(
        "[notify]\nsecrets_dir = \"{}\"\nallow_networks = [\"127.0.0.1/32\"]\n\
         ca_files = [\"{}\"]\nsystem_roots = false\ntimeout_seconds = 10\n",
        tmp.path().join("secrets").display(),
        tmp.path().join("ca.pem").display()
    );
    if let Some(rx) = sink {
        text.push_str(&format!(
            "[[notify.sinks]]\nname = \"hook\"\nformat = \"webhook\"\ntarget = \"{}\"\nsecret = \"hook\"\n",
            rx.url("https", "127.0.0.1")
        ));
    }
    let parsed: Config = toml::from_str(&text)?;
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        agent_listen: "127.0.0.1:0".into(),
        expiry_sweep_seconds: 3600,
        max_pending_per_requester: 1_000_000,
        notify: parsed.notify,
        ..Config::default()
    };
    let init = state::init(&dir, &cfg, &[]).await?;
    let server = jitgate_controller::start(&dir, &cfg).await?;
    let base = format!("https://{}", server.addr);
    let a = Caller::local();
    let inv = &server.app.inventory;
    inv.add_group(&a, "notify", "bench@example.com").await?;
    for i in 0..vms {
        inv.add_vm(
            &a,
            &format!("nvm{i}"),
            "notify",
            &[std::net::IpAddr::from([192, 0, 2, 1])],
        )
        .await?;
    }
    let pem = std::fs::read(dir.ca_cert())?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .pool_max_idle_per_host(conc as usize * 2)
        .build()?;
    let r = client
        .put(format!(
            "{base}/api/v1/resourceGroups/notify/jitNetworkAccessPolicies/default"
        ))
        .bearer_auth(&init.admin_token)
        .json(&json!({"ports": [{"number": 22, "protocol": "TCP",
            "allowedSourceAddressPrefixes": ["10.0.0.0/8"], "maxRequestAccessDuration": "PT3H",
            "approval": {"stages": [{"approvers": ["token:approver"], "required": 1}],
                "timeout": "P7D"}}]}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("policy: {}", r.text().await?);
    }
    let requester = server
        .app
        .tokens
        .create(&a, "bench-notify", Role::Requester, &Scope::All, None, &[])
        .await?
        .1;
    Ok(Variant {
        name,
        _tmp: tmp,
        server,
        base,
        requester,
        client,
    })
}

/// Waits until `rx` holds `n` requests (the healthy sink caught up), at most `limit`.
pub(crate) async fn drained(rx: &Receiver, n: usize, limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        // Counted, not copied: copying tens of thousands of recorded requests every few
        // milliseconds would take the CPU the delivery being waited for needs.
        let got = rx.got.lock().map(|g| g.len()).unwrap_or(0);
        if got >= n {
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!("the healthy sink got {got} of {n} events in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rows and the lines under them (the comparisons and the lag).
pub async fn rows(n: u64, conc: u64, vms: u64) -> Result<(Vec<Row>, Vec<String>)> {
    // The receivers stand in for other hosts: they run on a thread of their own at a lower
    // priority (the controller's notification sending thread is one too), so that on this
    // 2-core machine they take CPU only when the controller leaves some.
    let remote = Sender::start()?;
    let (pki, healthy, hanging) = remote
        .run(async {
            let pki = Pki::new("bench notify CA");
            let healthy = Receiver::https(&pki, "127.0.0.1").await;
            let hanging = Receiver::https(&pki, "127.0.0.1").await;
            (pki, healthy, hanging)
        })
        .await
        .context("the receivers' thread")?;
    // The healthy one answers 200 with a short body, as Slack's and Teams' webhooks do.
    healthy.answer(Answer::Status(200));
    hanging.answer(Answer::Hang);
    let variants = [
        variant("no sink", &pki, None, vms, conc).await?,
        variant("one healthy sink", &pki, Some(&healthy), vms, conc).await?,
        variant(
            "one sink that never answers",
            &pki,
            Some(&hanging),
            vms,
            conc,
        )
        .await?,
    ];
    let mut rows = Vec::new();
    let mut offset = 0u64;
    let mut told = 0usize;
    for v in &variants {
        // Warm up: connections open.
        run_phase(
            &v.client,
            &v.base,
            &v.requester,
            conc * 4,
            conc,
            &Op::Me,
            0,
            vms,
            None,
        )
        .await;
    }
    // Many short rounds rather than a few long ones: the machine's other load and the
    // databases' growth drift over a run, and each round's variants run back to back.
    let per_round = (n / 2).max(50);
    for round in 1..=ROUNDS {
        // Each round starts with another variant: none is always first (or last).
        for k in 0..variants.len() {
            let v = &variants[(k + round - 1) % variants.len()];
            eprintln!(
                "pending initiate x{per_round}, {} (round {round}) ...",
                v.name
            );
            let (lat, err, wall) = run_phase(
                &v.client,
                &v.base,
                &v.requester,
                per_round,
                conc,
                &PENDING,
                offset,
                vms,
                None,
            )
            .await;
            offset += per_round;
            rows.push(summarize(
                &format!("initiate (pending approval), {} (round {round})", v.name),
                0,
                lat,
                err,
                wall,
            ));
            if v.name == "one healthy sink" {
                told += per_round as usize;
                drained(&healthy, told, Duration::from_secs(120)).await?;
            }
        }
    }
    // Each round's ratio to the no-sink run of the same round, and the median of those: one
    // lucky or unlucky round does not decide, and a drift over the run cancels out.
    let rate = |name: &str, round: usize| {
        rows.iter()
            .find(|r| r.phase.contains(name) && r.phase.ends_with(&format!("(round {round})")))
            .map(|r| r.ops as f64 / r.secs)
            .unwrap_or(0.0)
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let none = median((1..=ROUNDS).map(|r| rate("no sink", r)).collect());
    let mut lines = Vec::new();
    for name in ["one healthy sink", "one sink that never answers"] {
        let with = median((1..=ROUNDS).map(|r| rate(name, r)).collect());
        let ratio = median(
            (1..=ROUNDS)
                .map(|r| rate(name, r) / rate("no sink", r).max(1.0))
                .collect(),
        );
        let diff = (ratio - 1.0) * 100.0;
        lines.push(format!(
            "{name} vs no sink, median over {ROUNDS} rounds of each round's ratio: {diff:+.1} % (target: within 5 %: {}); medians of req/s: {with:.0} vs {none:.0}, difference {:.0} req/s ({:+.1} %)",
            if diff >= -5.0 { "met" } else { "MISSED" },
            with - none,
            (with - none) / none.max(1.0) * 100.0,
        ));
    }
    // At the target rate: latency without a sink (the floor), then with the healthy sink
    // and its delivery lag.
    let paced = n.max(1000);
    let at_target = |i: usize, offset: u64| {
        let v = &variants[i];
        eprintln!("pending initiate x{paced} paced at 1000/s, {} ...", v.name);
        run_phase(
            &v.client,
            &v.base,
            &v.requester,
            paced,
            conc,
            &PENDING,
            offset,
            vms,
            Some(1000.0),
        )
    };
    let (lat, err, wall) = at_target(0, offset).await;
    offset += paced;
    rows.push(summarize(
        "initiate (pending approval) paced at 1 000/s, no sink",
        0,
        lat,
        err,
        wall,
    ));
    let before = healthy.got.lock().map(|g| g.len()).unwrap_or(0);
    let (lat, err, wall) = at_target(1, offset).await;
    rows.push(summarize(
        "initiate (pending approval) paced at 1 000/s, one healthy sink",
        0,
        lat,
        err,
        wall,
    ));
    drained(&healthy, before + paced as usize, Duration::from_secs(120)).await?;
    let mut lag: Vec<i64> = healthy.received()[before..]
        .iter()
        .filter_map(|r| {
            let t = r.json()["timeUtc"].as_str().map(str::to_string)?;
            let made = jitgate_api::time::parse(&t).ok()?;
            Some(r.at_ms - made)
        })
        .collect();
    lag.sort_unstable();
    let pct = |p: f64| {
        let i = ((lag.len() as f64 * p).ceil() as usize).clamp(1, lag.len().max(1)) - 1;
        lag.get(i).copied().unwrap_or(0)
    };
    let (p50, p99, max) = (pct(0.5), pct(0.99), pct(1.0));
    lines.push(format!(
        "delivery lag at 1 000 req/s, one healthy sink, {} events (arrival at the receiver minus the event's time, ms): p50 {p50}, p99 {p99}, max {max} (target: p99 ≤ 1 000 ms: {})",
        lag.len(),
        if p99 <= 1000 { "met" } else { "MISSED" },
    ));
    let (floor, with) = (&rows[rows.len() - 2], &rows[rows.len() - 1]);
    lines.push(format!(
        "initiate latency at 1 000 req/s, one healthy sink vs no sink: p99 {:.2} vs {:.2} ms (difference {:+.2} ms), p50 {:.2} vs {:.2} ms",
        with.p99,
        floor.p99,
        with.p99 - floor.p99,
        with.p50,
        floor.p50
    ));
    for v in variants {
        v.server.stop().await;
    }
    drop(hanging);
    Ok((rows, lines))
}
