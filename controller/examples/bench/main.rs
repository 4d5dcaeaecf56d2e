//! Controller benchmark: initiate requests/s and latency at 64 concurrent callers over HTTPS
//! against the embedded SQLite database (or, with `--backend postgres`, a throwaway
//! PostgreSQL cluster the bench starts and removes), beside the floor (an authenticated
//! trivial GET on the same server in the same run); then again with a large request history.
//!
//! cargo run --release -p jitgate-controller --example bench -- [--requests N] [--history 100000]
//!     [--concurrency 64] [--sync full|normal] [--backend sqlite|postgres]
//!
//! Each history also measures a renewal: the same requests again while their grants are
//! active, each superseding one (its floor: the fresh initiates just before). `--only
//! history` runs those rows alone (no approvals, no notifications).
//!
//! Prints a markdown table on stdout; progress on stderr. All traffic is to 127.0.0.1.

mod notify;
#[path = "../../../notify/tests/common/mod.rs"]
mod receivers;
mod round_steps;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jitgate_api::InitiateBody as InitiateJson;
use jitgate_api::time::now_ms;
use jitgate_api::{Role, Scope};
use jitgate_controller::app::{App, Parts};
use jitgate_controller::authz::Caller;
use jitgate_controller::request::Initiate;
use jitgate_controller::state::{self, Config, StateDir};
use jitgate_controller::store::{Backend, DbOptions, Synchronous};
use serde_json::json;

struct Opts {
    requests: u64,
    history: u64,
    concurrency: u64,
    sync: String,
    vms: u64,
    /// Only one part, for working on it.
    only: Option<Only>,
    /// Keep the state directory (the seeded database) and print where, for inspection.
    keep: bool,
    backend: Backend,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        requests: 20_000,
        history: 100_000,
        concurrency: 64,
        sync: "full".into(),
        vms: 100,
        only: None,
        keep: false,
        backend: Backend::Sqlite,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--requests" => o.requests = val()?.parse()?,
            "--history" => o.history = val()?.parse()?,
            "--concurrency" => o.concurrency = val()?.parse()?,
            "--sync" => o.sync = val()?,
            "--vms" => o.vms = val()?.parse()?,
            "--backend" => {
                o.backend = val()?
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--backend: {e} (sqlite or postgres)"))?
            }
            "--only" => match val()?.as_str() {
                "notify" => o.only = Some(Only::Notify),
                "round-steps" => o.only = Some(Only::RoundSteps),
                "history" => o.only = Some(Only::History),
                other => bail!("--only: unknown part {other} (notify, round-steps or history)"),
            },
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                println!(
                    "bench [--requests N (20000)] [--history N (100000)] [--concurrency N (64)] [--sync full|normal] [--vms N (100)] [--backend sqlite|postgres (sqlite)] [--only notify|round-steps|history] [--keep]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if o.concurrency == 0 || o.requests == 0 {
        bail!("--requests and --concurrency must be positive");
    }
    if o.only.is_some_and(|x| x != Only::History) && o.backend != Backend::Sqlite {
        bail!("--only notify and round-steps run on SQLite only");
    }
    Ok(o)
}

/// The parts `--only` runs alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    /// The notification rows.
    Notify,
    /// The delivery round's step times under load (`round_steps`).
    RoundSteps,
    /// The request-history rows alone (floor, initiate, renewal, paced), no approvals or
    /// notifications.
    History,
}

struct Row {
    phase: String,
    history: u64,
    ops: u64,
    errors: u64,
    secs: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

/// A plain initiate, approved by policy.
const PLAIN: Op = Op::Initiate {
    prefix: "vm",
    status: "Initiated",
};

/// The phase whose initiates each supersede an active grant of the phase before it.
const RENEWAL: &str = "initiate renewing an active grant";

/// What each call of a phase does.
#[derive(Clone)]
enum Op {
    /// `GET /api/v1/me`: the floor (TLS + HTTP + one token lookup).
    Me,
    /// An initiate on VM `{prefix}{i % vms}` that must come back with this status.
    Initiate {
        prefix: &'static str,
        status: &'static str,
    },
    /// Approve the i-th of these pending requests (each completes it).
    Approve(Arc<Vec<String>>),
}

/// Runs `total` calls from `conc` concurrent tasks.
#[allow(clippy::too_many_arguments)]
async fn run_phase(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    total: u64,
    conc: u64,
    op: &Op,
    src_offset: u64,
    vms: u64,
    rate: Option<f64>,
) -> (Vec<Duration>, u64, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let client = client.clone();
        let base = base.to_string();
        let token = token.to_string();
        let next = next.clone();
        let errors = errors.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                // Paced (open loop): request i is due at start + i/rate, and its latency counts
                // from then, so a slow answer is not hidden by sending the next one late.
                let t = match rate {
                    Some(r) => {
                        let due = start + Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let (r, want) = match &op {
                    Op::Initiate { prefix, status } => {
                        let n = src_offset + i;
                        let src =
                            format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
                        let body = json!({"virtualMachines": [{"id": format!("{prefix}{}", i % vms), "ports": [
                            {"number": 22, "allowedSourceAddressPrefix": src, "duration": "PT1H"}]}],
                            "justification": "bench"});
                        let r = client
                            .post(format!("{base}/api/v1/jitNetworkAccessPolicies/default/initiate"))
                            .bearer_auth(&token)
                            .json(&body)
                            .send()
                            .await;
                        (r, Some(*status))
                    }
                    Op::Approve(ids) => {
                        let id = &ids[i as usize % ids.len()];
                        let r = client
                            .post(format!("{base}/api/v1/requests/{id}/approve"))
                            .bearer_auth(&token)
                            .send()
                            .await;
                        (r, Some("Initiated"))
                    }
                    Op::Me => {
                        let r = client
                            .get(format!("{base}/api/v1/me"))
                            .bearer_auth(&token)
                            .send()
                            .await;
                        (r, None)
                    }
                };
                let ok = match r {
                    Ok(resp) => {
                        let st = resp.status();
                        let body = resp.bytes().await;
                        let text = body
                            .as_ref()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default();
                        let ok = st.is_success()
                            && want.is_none_or(|w| text.contains(&format!("\"status\":\"{w}\"")));
                        if !ok && errors.load(Ordering::Relaxed) == 0 {
                            eprintln!("first error: {st} {text}");
                        }
                        ok
                    }
                    Err(e) => {
                        if errors.load(Ordering::Relaxed) == 0 {
                            eprintln!("first error: {e}");
                        }
                        false
                    }
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(v) = t.await {
            all.extend(v);
        }
    }
    let wall = start.elapsed();
    (all, errors.load(Ordering::Relaxed), wall)
}

fn summarize(
    phase: &str,
    history: u64,
    mut lat: Vec<Duration>,
    errors: u64,
    wall: Duration,
) -> Row {
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[idx].as_secs_f64() * 1000.0
    };
    Row {
        phase: phase.into(),
        history,
        ops: lat.len() as u64,
        errors,
        secs: wall.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: pct(1.0),
    }
}

async fn count_requests(app: &App) -> Result<u64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM requests")
        .fetch_one(app.db.pool())
        .await?;
    Ok(u64::try_from(n)?)
}

/// Where the seeded history's sources start (`10.128.0.0` on): the measured phases take
/// theirs from 0 up, so a measured request never meets an active seeded grant on its key
/// (it would supersede it: another kind of request, with more writes). The sources are
/// 24-bit, so the seed has room for 8 388 608 requests.
const SEED_SOURCES: u64 = 1 << 23;

/// Fills the history directly through the library (same code path as the API's initiate,
/// minus HTTP), with `synchronous = NORMAL` to keep seeding time reasonable.
async fn seed(url: &str, upto: u64, vms: u64, offset: u64) -> Result<()> {
    let store = App::open(
        url,
        &DbOptions {
            max_connections: 4,
            synchronous: Synchronous::Normal,
            ..DbOptions::default()
        },
        Parts::default(),
    )
    .await?;
    let have = count_requests(&store).await?;
    if have >= upto {
        return Ok(());
    }
    let caller = Caller::token(
        "seed",
        "seed",
        Role::Admin,
        Scope::All,
        IpAddr::from([127, 0, 0, 1]),
    );
    let t0 = Instant::now();
    let todo = upto - have;
    if todo > SEED_SOURCES {
        anyhow::bail!("--history: at most {SEED_SOURCES} requests of history (distinct sources)");
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        let caller = caller.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= todo {
                    break;
                }
                let n = offset + i;
                let src = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
                let j: InitiateJson = match serde_json::from_value(json!({"virtualMachines": [{"id": format!("vm{}", i % vms), "ports": [
                    {"number": 22, "allowedSourceAddressPrefix": src, "duration": "PT1H"}]}], "justification": "seed"}))
                {
                    Ok(j) => j,
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                };
                let req = Initiate::from_body(&j, caller.address, now_ms())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                store
                    .lifecycle
                    .initiate(&caller, &req)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if i.is_multiple_of(10_000) && i > 0 {
                    eprintln!("  seeded {i}/{todo} ({:.0}s)", t0.elapsed().as_secs_f64());
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!(
        "  seeded {todo} requests in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    // A controller whose history grew over weeks has a checkpointed database, not a WAL
    // holding the whole history, and fresh planner statistics (PostgreSQL's autovacuum would
    // have gathered them): so before measuring. Without the checkpoint, PostgreSQL writes the
    // seeded pages out during the measured phases (at 1 000 000 requests the initiate fell
    // to a third, and the next section's first rounds, on another database of the same
    // cluster, to a quarter of their later rounds).
    if store.db.backend() == Backend::Postgres {
        for statement in ["VACUUM ANALYZE", "CHECKPOINT"] {
            sqlx::query(statement).execute(store.db.pool()).await?;
        }
        store.close().await;
        return Ok(());
    }
    for _ in 0..50 {
        use sqlx::Row;
        let r = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(store.db.pool())
            .await?;
        if r.try_get::<i64, _>(0)? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.close().await;
    Ok(())
}

fn main() -> Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let o = parse_args()?;
    // JIT_LOG=jitgate_controller::lifecycle=trace shows each batch's phases.
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("JIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    let rounds = round_steps::Rounds::default();
    let steps = (o.only == Some(Only::RoundSteps)).then(|| rounds.layer());
    tracing_subscriber::registry().with(log).with(steps).init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(o, rounds))
}

async fn run(o: Opts, rounds: round_steps::Rounds) -> Result<()> {
    match o.only {
        Some(Only::Notify) => return print_notify(&o).await,
        Some(Only::RoundSteps) => {
            return round_steps::print(&rounds, o.requests, o.concurrency, o.vms).await;
        }
        Some(Only::History) | None => {}
    }
    let tmp = tempfile::tempdir()?;
    let dir = StateDir(tmp.path().join("state"));
    // Kept until the end: dropping the cluster stops it and removes its files.
    let (_pg, database_url) = match o.backend {
        Backend::Sqlite => (None, None),
        Backend::Postgres => {
            // fsync on, as SQLite's synchronous=full: commits reach the disk.
            let pg = tokio::task::spawn_blocking(|| {
                jitgate_testpg::Cluster::builder().durable().start()
            })
            .await??;
            let db = pg.create_database()?;
            (Some(pg), Some(db.url))
        }
    };
    let cfg = Config {
        database_url,
        listen: "127.0.0.1:0".into(),
        agent_listen: "127.0.0.1:0".into(),
        sqlite_synchronous: o.sync.parse::<Synchronous>()?,
        expiry_sweep_seconds: 3600,
        // The approval rows keep thousands of requests pending.
        max_pending_per_requester: 1_000_000,
        ..Config::default()
    };
    let init = state::init(&dir, &cfg, &[]).await?;
    let server = jitgate_controller::start(&dir, &cfg).await?;
    let base = format!("https://{}", server.addr);
    let s = &server.app.inventory;
    let a = Caller::local();
    s.add_group(&a, "bench", "bench@example.com").await?;
    for i in 0..o.vms {
        s.add_vm(
            &a,
            &format!("vm{i}"),
            "bench",
            &[IpAddr::from([192, 0, 2, 1])],
        )
        .await?;
    }
    if server.app.db.backend() == Backend::Postgres {
        // A fresh cluster still writes out what initdb, the database's creation and the
        // migrations left dirty: not during the first measured phase.
        sqlx::query("CHECKPOINT")
            .execute(server.app.db.pool())
            .await?;
    }
    let admin = init.admin_token;
    let pem = std::fs::read(dir.ca_cert())?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .pool_max_idle_per_host(o.concurrency as usize * 2)
        .build()?;
    let r = client
        .put(format!(
            "{base}/api/v1/resourceGroups/bench/jitNetworkAccessPolicies/default"
        ))
        .bearer_auth(&admin)
        .json(&json!({"ports": [{"number": 22, "protocol": "TCP",
            "allowedSourceAddressPrefixes": ["10.0.0.0/8", "2001:db8::/32"],
            "maxRequestAccessDuration": "PT3H"}]}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("policy: {}", r.text().await?);
    }
    let requester = server
        .app
        .tokens
        .create(
            &a,
            "bench",
            Role::Requester,
            &Scope::ResourceGroup("bench".into()),
            None,
            &[],
        )
        .await?
        .1;
    let (auto_requester, approver) =
        approval_setup(&server.app, &client, &base, &admin, o.vms).await?;
    let mut rows = Vec::new();
    let mut approval_rows = Vec::new();
    let mut offset = 0u64;
    for history_target in [0u64, o.history] {
        if history_target > 0 {
            eprintln!("seeding history to {history_target} requests ...");
            seed(&cfg.database_url(&dir), history_target, o.vms, SEED_SOURCES).await?;
        }
        let history = count_requests(&server.app).await?;
        // warm up: open the connections
        run_phase(
            &client,
            &base,
            &requester,
            o.concurrency * 4,
            o.concurrency,
            &Op::Me,
            0,
            o.vms,
            None,
        )
        .await;
        eprintln!(
            "floor: GET /api/v1/me x{} (history {history}) ...",
            o.requests
        );
        let (lat, err, wall) = run_phase(
            &client,
            &base,
            &requester,
            o.requests,
            o.concurrency,
            &Op::Me,
            0,
            o.vms,
            None,
        )
        .await;
        rows.push(summarize("floor: GET /me", history, lat, err, wall));
        // Fresh initiates, then renewing access: the same requests again while their grants
        // are active, so each supersedes one (its floor: the fresh initiates just before).
        for phase in ["initiate", RENEWAL] {
            eprintln!("{phase} x{} (history {history}) ...", o.requests);
            let (lat, err, wall) = run_phase(
                &client,
                &base,
                &requester,
                o.requests,
                o.concurrency,
                &PLAIN,
                offset,
                o.vms,
                None,
            )
            .await;
            rows.push(summarize(phase, history, lat, err, wall));
        }
        offset += o.requests;
        // The same at the target rate: does 1 000 req/s come with p99 ≤ 20 ms?
        let paced = (o.requests / 2).max(1);
        eprintln!("initiate x{paced} paced at 1000/s (history {history}) ...");
        let (lat, err, wall) = run_phase(
            &client,
            &base,
            &requester,
            paced,
            o.concurrency,
            &PLAIN,
            offset,
            o.vms,
            Some(1000.0),
        )
        .await;
        offset += paced;
        rows.push(summarize(
            "initiate, paced at 1 000/s",
            history,
            lat,
            err,
            wall,
        ));
        if history_target == 0 && o.only.is_none() {
            let n = (o.requests / 2).max(1);
            let (r, next) = approval_phases(
                &server.app,
                &client,
                &base,
                (&requester, &auto_requester, &approver),
                n,
                o.concurrency,
                offset,
                o.vms,
                (o.requests / 2).max(100),
            )
            .await?;
            offset = next;
            approval_rows = r;
        }
    }
    println!(
        "Controller, {} concurrent HTTPS callers (keep-alive), {}, {} VMs, 2-core machine, server and load generator in one process. Unpaced rows: each caller sends its next request as soon as the previous answer arrives (saturation: latency there is mostly queueing, ≈ callers / throughput). Paced rows: requests are due at a fixed 1 000/s and latency counts from when each was due.\n",
        o.concurrency,
        match o.backend {
            Backend::Sqlite => format!("embedded SQLite (synchronous={})", o.sync),
            Backend::Postgres =>
                "PostgreSQL (a throwaway local cluster on a unix socket, fsync on)".to_string(),
        },
        o.vms
    );
    println!(
        "| operation | requests in history | calls | errors | req/s | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.phase,
            r.history,
            r.ops,
            r.errors,
            r.ops as f64 / r.secs,
            r.p50,
            r.p99,
            r.max
        );
    }
    for h in rows
        .iter()
        .filter(|r| r.phase == RENEWAL)
        .map(|r| r.history)
    {
        let rate = |name: &str| {
            rows.iter()
                .find(|r| r.phase == name && r.history == h)
                .map_or(0.0, |r| r.ops as f64 / r.secs)
        };
        let (fresh, renew) = (rate("initiate"), rate(RENEWAL));
        if fresh > 0.0 {
            println!(
                "\nrenewal (each request supersedes an active grant) vs fresh initiate at {h} requests of history: {renew:.0} vs {fresh:.0} req/s, difference {:.0} req/s ({:+.1} %)",
                renew - fresh,
                (renew - fresh) / fresh * 100.0
            );
        }
    }
    println!(
        "\nApprovals (docs/approvals.md), same run, fresh database: an initiate under an approval rule that auto-approves it beside the plain initiate (best of 3 each, alternating), and approvals that each complete a pending request (one stage, one approver) with the pending requests seeded first.\n"
    );
    println!(
        "| operation | pending at start | calls | errors | req/s | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &approval_rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.phase,
            r.history,
            r.ops,
            r.errors,
            r.ops as f64 / r.secs,
            r.p50,
            r.p99,
            r.max
        );
    }
    let rate = |name: &str| {
        approval_rows
            .iter()
            .filter(|r| r.phase.starts_with(name))
            .map(|r| r.ops as f64 / r.secs)
            .fold(0.0, f64::max)
    };
    let (plain, auto) = (rate("initiate, plain"), rate("initiate, auto-approving"));
    if plain > 0.0 {
        println!(
            "\nauto-approving rule vs plain initiate, best of 3: {auto:.0} vs {plain:.0} req/s, difference {:.0} req/s ({:+.1} %; target: at most 5 % slower: {})",
            auto - plain,
            (auto - plain) / plain * 100.0,
            if auto >= plain * 0.95 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    if o.only.is_none() {
        print_notify(&o).await?;
    }
    let verify = server.app.audit.verify(&a).await?;
    println!(
        "\nactivity log after the run: {} entries, verify ok = {}",
        verify.entries, verify.ok
    );
    server.stop().await;
    if o.keep {
        eprintln!("state directory kept: {}", tmp.keep().display());
    }
    Ok(())
}

/// The notification rows and the lines under them (their own controllers).
async fn print_notify(o: &Opts) -> Result<()> {
    let n = (o.requests / 2).max(100);
    let (notify_rows, notify_lines) = notify::rows(n, o.concurrency, o.vms).await?;
    println!(
        "\nNotifications (docs/notifications.md), same run, three more controllers alike but for their sinks: initiates that each write a `request.pending_approval` event (the request path's only notification cost: one row in the same commit), with no sink, one healthy webhook receiver and one receiver that never answers (7 rounds of half the requests each, alternating, each round starting with another; compared by the median of each round's ratio to the no-sink run of the same round, so that a drift over the run cancels out; the receivers run on a thread of their own at nice +15, standing in for other hosts: a child process would be scheduled no differently, since with the kernel's autogroup scheduling nice values rank threads within one session and a child stays in the bench's session; the healthy receiver answers 200 with a short body, as Slack's and Teams' webhooks do); then the delivery lag at 1 000 requests/s with the healthy sink.\n"
    );
    println!("| operation | calls | errors | req/s | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &notify_rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.phase,
            r.ops,
            r.errors,
            r.ops as f64 / r.secs,
            r.p50,
            r.p99,
            r.max
        );
    }
    println!();
    for l in &notify_lines {
        println!("{l}\n");
    }
    Ok(())
}

/// Three more groups for the approval rows: `plain` (port 22, no rule), `appr` (the same
/// under a rule that auto-approves up to PT3H) and `pend` (a rule that always needs one
/// approver of `bench-approvers`), each with `vms` VMs; returns the tokens of a requester
/// on all of them and of the approver.
async fn approval_setup(
    app: &App,
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    vms: u64,
) -> Result<(String, String)> {
    let a = Caller::local();
    // `plain` (no rule) is the floor of `appr`: both on VMs no earlier phase wrote to.
    for (group, prefix, rule) in [
        ("plain", "qvm", None),
        ("appr", "avm", Some(true)),
        ("pend", "pvm", Some(false)),
    ] {
        app.inventory
            .add_group(&a, group, "bench@example.com")
            .await?;
        for i in 0..vms {
            app.inventory
                .add_vm(
                    &a,
                    &format!("{prefix}{i}"),
                    group,
                    &[IpAddr::from([192, 0, 2, 1])],
                )
                .await?;
        }
        let mut port = json!({"number": 22, "protocol": "TCP",
            "allowedSourceAddressPrefixes": ["10.0.0.0/8"], "maxRequestAccessDuration": "PT3H"});
        if let Some(auto) = rule {
            port["approval"] = json!({"stages": [{"approvers": ["group:bench-approvers"], "required": 1}],
                       "timeout": "P7D"});
            if auto {
                port["approval"]["autoApproveUpTo"] = json!("PT3H");
            }
        }
        let r = client
            .put(format!(
                "{base}/api/v1/resourceGroups/{group}/jitNetworkAccessPolicies/default"
            ))
            .bearer_auth(admin)
            .json(&json!({ "ports": [port] }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("policy of {group}: {}", r.text().await?);
        }
    }
    let requester = app
        .tokens
        .create(&a, "bench-appr", Role::Requester, &Scope::All, None, &[])
        .await?
        .1;
    let approver = app
        .tokens
        .create(
            &a,
            "approver",
            Role::Reader,
            &Scope::All,
            None,
            &["bench-approvers".to_string()],
        )
        .await?
        .1;
    Ok((requester, approver))
}

/// The approval rows: plain and auto-approved initiates alternating (3 each), then
/// `pending` requests seeded through the library and each approved over HTTPS. Returns the
/// rows and the next free source offset.
#[allow(clippy::too_many_arguments)]
async fn approval_phases(
    app: &App,
    client: &reqwest::Client,
    base: &str,
    (_, auto_requester, approver): (&str, &str, &str),
    n: u64,
    conc: u64,
    mut offset: u64,
    vms: u64,
    pending: u64,
) -> Result<(Vec<Row>, u64)> {
    let mut rows = Vec::new();
    let auto = Op::Initiate {
        prefix: "avm",
        status: "Initiated",
    };
    let plain = Op::Initiate {
        prefix: "qvm",
        status: "Initiated",
    };
    for round in 1..=3 {
        for (name, op, token) in [
            ("initiate, plain", &plain, auto_requester),
            ("initiate, auto-approving rule", &auto, auto_requester),
        ] {
            eprintln!("{name} x{n} (round {round}) ...");
            let (lat, err, wall) =
                run_phase(client, base, token, n, conc, op, offset, vms, None).await;
            offset += n;
            rows.push(summarize(
                &format!("{name} (round {round})"),
                0,
                lat,
                err,
                wall,
            ));
        }
    }
    eprintln!("seeding {pending} pending requests ...");
    let caller = Caller::token(
        "tok_bench_pending",
        "pending-bench",
        Role::Requester,
        Scope::All,
        IpAddr::from([127, 0, 0, 1]),
    );
    let mut ids = Vec::with_capacity(pending as usize);
    let mut i = 0u64;
    while i < pending {
        let mut jobs = Vec::new();
        for _ in 0..64.min(pending - i) {
            let n = offset + i;
            let body: InitiateJson = serde_json::from_value(json!({
                "virtualMachines": [{"id": format!("pvm{}", i % vms), "ports": [
                    {"number": 22, "allowedSourceAddressPrefix":
                        format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff),
                     "duration": "PT1H"}]}],
                "justification": "bench"}))?;
            jobs.push((
                caller.clone(),
                Initiate::from_body(&body, caller.address, now_ms())?,
            ));
            i += 1;
        }
        for r in app.lifecycle.initiate_batch(&jobs).await? {
            let v = r?;
            if v.status.as_str() != "PendingApproval" {
                bail!("a seeded request is {}, not pending", v.status);
            }
            ids.push(v.id);
        }
    }
    offset += pending;
    eprintln!("approve x{pending} ...");
    let (lat, err, wall) = run_phase(
        client,
        base,
        approver,
        pending,
        conc,
        &Op::Approve(Arc::new(ids)),
        0,
        vms,
        None,
    )
    .await;
    rows.push(summarize(
        "approve (completes the request)",
        pending,
        lat,
        err,
        wall,
    ));
    Ok((rows, offset))
}
