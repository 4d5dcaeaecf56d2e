//! Portal benchmark: the full HTTPS response time of each page type (database included),
//! p50/p99 over sequential requests from one signed-in browser session, with 10 000 VMs and
//! 1 000 000 requests in history, beside the floor (the signed-in `/auth/session` page: the
//! same session check, TLS and rendering, and almost no data); and each page's weight with
//! its assets.
//!
//! cargo run --release -p jitgate-controller --example portal_bench -- [--vms 10000]
//!     [--requests 1000000] [--rounds 300] [--state DIR]
//!
//! `--state DIR` keeps the seeded state directory in DIR and reuses it when it is already
//! seeded (with the same sizes), so that a change can be measured again without seeding a
//! million requests each time (migrations added since are applied when it starts).
//!
//! Prints a markdown table on stdout; progress on stderr. All traffic is to 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use jitgate_api::time::now_ms;
use jitgate_api::{AgentStatus, InitiateBody, PolicyBody, Role, Scope};
use jitgate_controller::authz::Caller;
use jitgate_controller::policies::Target;
use jitgate_controller::request::Initiate;
use jitgate_controller::state::{self, Config, StateDir};
use serde_json::json;

struct Opts {
    vms: u64,
    requests: u64,
    rounds: usize,
    /// Where to keep (and find) the seeded state directory.
    state: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        vms: 10_000,
        requests: 1_000_000,
        rounds: 300,
        state: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--vms" => o.vms = val()?.parse()?,
            "--requests" => o.requests = val()?.parse()?,
            "--rounds" => o.rounds = val()?.parse()?,
            "--state" => o.state = Some(val()?.into()),
            "-h" | "--help" => {
                println!(
                    "portal_bench [--vms N (10000)] [--requests N (1000000)] [--rounds N (300)] \
                     [--state DIR]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if o.vms < 100 || o.rounds == 0 {
        bail!("--vms must be at least 100 and --rounds positive");
    }
    Ok(o)
}

fn main() -> Result<()> {
    let o = parse_args()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(o))
}

/// Groups of the inventory; the first 70 % have a policy (their VMs are configured, or
/// unsupported without an agent: every tenth VM has none).
const GROUPS: u64 = 100;

fn group_of(vm: u64) -> u64 {
    vm % GROUPS
}

fn has_policy(group: u64) -> bool {
    group < GROUPS * 7 / 10
}

async fn run(o: Opts) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = StateDir(match &o.state {
        Some(d) => d.clone(),
        None => tmp.path().join("state"),
    });
    // Written once the seeding is complete: the sizes it was seeded with.
    let marker = dir.0.join("portal-bench-seeded");
    let sizes = format!("{} {}", o.vms, o.requests);
    let reuse = match std::fs::read_to_string(&marker) {
        Ok(s) if s == sizes => true,
        Ok(s) => bail!("{} was seeded with {s}, not {sizes}", dir.0.display()),
        Err(_) if dir.config().exists() => {
            bail!("{} holds an unfinished seeding: remove it", dir.0.display())
        }
        Err(_) => false,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let public = format!("https://127.0.0.1:{port}");
    let mut cfg = Config {
        listen: format!("127.0.0.1:{port}"),
        agent_listen: "127.0.0.1:0".into(),
        expiry_sweep_seconds: 3600,
        public_url: Some(public.clone()),
        login_links: Some(true),
        max_pending_per_requester: 1_000_000,
        ..Config::default()
    };
    if !reuse {
        state::init(&dir, &cfg, &[]).await?;
    }
    cfg.notify = notify_config(&dir)?;
    let server = jitgate_controller::start(&dir, &cfg).await?;
    let app = server.app.clone();
    seed_notifications(&app).await?;
    let local = Caller::local();
    let with_policy: Vec<u64> = (0..o.vms).filter(|i| has_policy(group_of(*i))).collect();
    if reuse {
        eprintln!("reusing the seeded state in {}", dir.0.display());
    } else {
        seed(&app, &o, &with_policy).await?;
        std::fs::write(&marker, &sizes)?;
    }

    // A browser session: a one-time link, redeemed.
    let link = app
        .sessions
        .create_link(&local, "bench", Role::Admin, &Scope::All)
        .await?;
    let pem = std::fs::read(dir.ca_cert())?;
    let browser = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let r = browser
        .post(format!("{public}/auth/link"))
        .header("origin", &public)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("t={}", link.secret))
        .send()
        .await?;
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("__Host-jitgate-session="))
        .and_then(|c| c.split(';').next())
        .context("no session cookie from the link")?
        .to_string();

    // Compliance: the policy assigned to the fleet and evaluated (once each run, so a
    // reused state gains one evaluation per run: the chart grows as a fleet's would).
    if app.compliance.assignments().await?.is_empty() {
        app.compliance
            .assign(&local, &jitgate_api::AssignBody { scope: "*".into() })
            .await?;
    }
    let t = Instant::now();
    let scan = app
        .compliance
        .evaluate(jitgate_api::ScanReason::OnDemand, false, None)
        .await?;
    eprintln!(
        "compliance evaluation {}: {} VMs judged in {:.1} s",
        scan.scan_id,
        scan.compliant + scan.non_compliant + scan.unknown,
        t.elapsed().as_secs_f64()
    );

    // The pages: a busy VM's, one of its requests, an older history page.
    let vm = format!("vm{}", with_policy[7]);
    let (hist, _) = app
        .lifecycle
        .history_page(&local, &vm, &Default::default(), 50)
        .await?;
    let request = hist.first().context("the VM has requests")?.id.clone();
    // An older page: the keyset after the newest ten.
    let (_, before) = app
        .lifecycle
        .history_page(&local, &vm, &Default::default(), 10)
        .await?;
    let before = before.context("the VM has more than ten requests")?;
    let agent: String = sqlx::query_scalar("SELECT id FROM agents ORDER BY vm, id LIMIT 1")
        .fetch_one(app.db.pool())
        .await?;
    let css = get(&browser, &cookie, &format!("{public}/assets/portal.css"))
        .await?
        .1;
    let js = get(
        &browser,
        &cookie,
        &format!("{public}/assets/htmx-2.0.11.min.js"),
    )
    .await?
    .1;
    let assets = css + js;
    let pages: Vec<(&str, String, bool)> = vec![
        (
            "floor: /auth/session (signed-in, no data)",
            "/auth/session".into(),
            false,
        ),
        ("JIT page, Configured tab", "/jit".into(), true),
        (RECOUNTED, "/jit".into(), true),
        (
            "JIT page, Unsupported tab",
            "/jit?tab=unsupported".into(),
            true,
        ),
        ("JIT page, name filter", "/jit?q=vm12".into(), true),
        (
            "JIT page, page 50",
            format!("/jit?after=vm{}", o.vms * 9 / 10),
            true,
        ),
        ("VM page", format!("/vms/{vm}"), true),
        (
            "Request access form",
            format!("/request?vm={vm}&connect=ssh"),
            true,
        ),
        ("Request page", format!("/requests/{request}"), true),
        (
            "Request live section (htmx)",
            format!("/requests/{request}/live"),
            false,
        ),
        ("History, newest", format!("/vms/{vm}/requests"), true),
        (
            "History, older page",
            format!("/vms/{vm}/requests?before={before}"),
            true,
        ),
        (
            "History, by status",
            format!("/vms/{vm}/requests?status=Revoked"),
            true,
        ),
        ("Approvals inbox", "/approvals".into(), true),
        ("Activity log, newest", "/activity".into(), true),
        ("Fleet", "/fleet".into(), true),
        // No agent is connected: the filter looks at its most agents and finds none.
        (
            "Fleet, a state no agent is in",
            "/fleet?status=online".into(),
            true,
        ),
        ("Agent page", format!("/fleet/{agent}"), true),
        (
            "Connections",
            format!("/vms/{vm}/connections?denied=1"),
            true,
        ),
        ("Compliance dashboard", "/compliance".into(), true),
        (
            "Compliance dashboard, one resource group",
            "/compliance?scope=rg%3Arg7&group=resourceGroup".into(),
            true,
        ),
        (
            "Activity log, one VM and operation",
            format!("/activity?vm={vm}&operation=Initiate+JIT+Network+Access"),
            true,
        ),
        ("Policy editor, a VM", format!("/vms/{vm}/policy"), true),
        (
            "Policy editor, a resource group",
            format!("/groups/rg{}/policy", group_of(with_policy[7])),
            true,
        ),
        ("Notifications", "/notifications".into(), true),
        (
            "Notification sink with its dead deliveries",
            format!("/notifications/{SINK}"),
            true,
        ),
    ];
    for _ in 0..3 {
        let t = Instant::now();
        let n = app.inventory.vms(&local).await?.len();
        eprintln!(
            "  inventory.vms: {n} in {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let total = count(&app, "requests").await?;
    let vms = count(&app, "vms").await?;
    println!(
        "{vms} VMs, {total} requests in history; {} sequential GETs per page over HTTPS with \
         keep-alive from one signed-in session (SQLite, release build). Weight: the page plus \
         its assets (style sheet {css} B, htmx {js} B), uncompressed. The JIT page's tab \
         counts are cached under the inventory generation: the row \"after an inventory \
         change\" raises it before each GET, so every one of its GETs counts again.\n",
        o.rounds
    );
    println!(
        "| page | p50 ms | p99 ms | max ms | p99 − floor p99 ms | bytes (page + assets) | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let mut floor_p99 = 0.0;
    for (name, path, with_assets) in &pages {
        let url = format!("{public}{path}");
        for _ in 0..20 {
            get(&browser, &cookie, &url).await?;
        }
        let mut lat = Vec::with_capacity(o.rounds);
        let mut bytes = 0;
        for _ in 0..o.rounds {
            if *name == RECOUNTED {
                // As a write that moves VMs between tabs does: the cached counts are stale.
                sqlx::query("UPDATE inventory_generation SET value = value + 1")
                    .execute(app.db.pool())
                    .await?;
            }
            let t = Instant::now();
            let (status, n) = get(&browser, &cookie, &url).await?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            if status != 200 {
                bail!("{path}: {status}");
            }
            bytes = n;
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        let (p50, p99, max) = (q(0.5), q(0.99), lat[lat.len() - 1]);
        if floor_p99 == 0.0 {
            floor_p99 = p99;
        }
        let weight = bytes + if *with_assets { assets } else { 0 };
        let ok = p99 <= 50.0 && weight <= 150 * 1024;
        println!(
            "| {name} | {p50:.1} | {p99:.1} | {max:.1} | {:+.1} | {weight} | {} |",
            p99 - floor_p99,
            if ok {
                "met (p99 ≤ 50 ms, ≤ 150 KB)"
            } else {
                "MISSED"
            }
        );
    }
    server.stop().await;
    Ok(())
}

/// The inventory, policies, agents and history (the sizes of `o`).
async fn seed(app: &jitgate_controller::App, o: &Opts, with_policy: &[u64]) -> Result<()> {
    let local = Caller::local();
    let t0 = Instant::now();
    eprintln!("inventory: {GROUPS} groups, {} VMs ...", o.vms);
    for g in 0..GROUPS {
        app.inventory
            .add_group(
                &local,
                &format!("rg{g}"),
                &format!("team{}@example.com", g % 10),
            )
            .await?;
    }
    for i in 0..o.vms {
        let addr = IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, (i & 0xff) as u8));
        app.inventory
            .add_vm(
                &local,
                &format!("vm{i}"),
                &format!("rg{}", group_of(i)),
                &[addr],
            )
            .await?;
    }
    let policy: PolicyBody = serde_json::from_value(json!({"ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
         "maxRequestAccessDuration": "PT3H"},
        {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
         "maxRequestAccessDuration": "PT3H"}]}))?;
    for g in (0..GROUPS).filter(|g| has_policy(*g)) {
        app.policies
            .put(&local, Target::Group(&format!("rg{g}")), &policy, None)
            .await?;
    }
    // Agents as enrolment leaves them (not connected: offline, and already told so, as a
    // fleet that has been running would be), for nine VMs in ten.
    let now = now_ms();
    for i in (0..o.vms).filter(|i| i % 10 != 0) {
        sqlx::query(
            "INSERT INTO agents (id, vm, cert_fingerprint, cert_serial, status, enrolled_ms, \
             last_seen_ms, offline_told) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(format!("vm{i}"))
        .bind(format!("{i:064x}"))
        .bind(format!("{i:x}"))
        .bind(AgentStatus::Active.as_str())
        .bind(now)
        .bind(now)
        .execute(app.db.pool())
        .await?;
    }
    eprintln!("  done in {:.0}s", t0.elapsed().as_secs_f64());

    // History: requests on the VMs that have a policy, through the library (the same code
    // path as the API's initiate, minus HTTP).
    let caller = Caller::token(
        "seed",
        "seeder",
        Role::Admin,
        Scope::All,
        IpAddr::from([127, 0, 0, 1]),
    );
    eprintln!("history: {} requests ...", o.requests);
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let with_policy = Arc::new(with_policy.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (app, caller, next, vms) = (
            app.clone(),
            caller.clone(),
            next.clone(),
            with_policy.clone(),
        );
        let todo = o.requests;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= todo {
                    return Ok::<(), anyhow::Error>(());
                }
                let vm = vms[(i % vms.len() as u64) as usize];
                let src = format!("203.0.113.{}", i % 250 + 1);
                let body: InitiateBody = serde_json::from_value(json!({
                    "virtualMachines": [{"id": format!("vm{vm}"), "ports": [
                        {"number": 22, "allowedSourceAddressPrefix": src, "duration": "PT1H"}]}],
                    "justification": format!("change ticket {i}")}))?;
                let req = Initiate::from_body(&body, caller.address, now_ms())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                app.lifecycle
                    .initiate(&caller, &req)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if i > 0 && i.is_multiple_of(100_000) {
                    eprintln!("  {i} ({:.0}s)", t0.elapsed().as_secs_f64());
                }
                // Sixty-four writers and their readers never leave the WAL idle, so the
                // background PASSIVE checkpoints never let it restart: truncate it now and
                // then, or a million requests leave tens of GB of WAL behind.
                if i > 0 && i.is_multiple_of(25_000) {
                    checkpoint(&app).await?;
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!("  done in {:.0}s", t0.elapsed().as_secs_f64());
    checkpoint(app).await?;
    Ok(())
}

/// The JIT page right after an inventory change: its tab counts are counted again.
const RECOUNTED: &str = "JIT page, Configured tab, after an inventory change (counts recounted)";

async fn get(c: &reqwest::Client, cookie: &str, url: &str) -> Result<(u16, usize)> {
    let r = c.get(url).header("cookie", cookie).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.bytes().await?.len()))
}

/// The sink the Notifications pages show: declared in controller.toml, as operators do;
/// nothing is sent to it (its deliveries are seeded as done).
const SINK: &str = "bench-chat";
/// Deliveries the sink keeps, delivered and dead: a month of a busy fleet's notifications.
const KEPT_DELIVERED: i64 = 600_000;
const KEPT_DEAD: i64 = 200;
/// And its backlog: an hour of events while its receiver is down, retrying (their next
/// attempt an hour away, so that they stay put while the pages are measured). The moment an
/// operator opens the Notifications page is when a sink has one.
const BACKLOG: i64 = 7_000;

fn notify_config(dir: &StateDir) -> Result<jitgate_notify::NotifyConfig> {
    let text = format!(
        r#"
[notify]
allow_networks = ["127.0.0.1/32"]
ca_files = ["{ca}"]
system_roots = false

[[notify.sinks]]
name = "{SINK}"
format = "slack"
target = "https://127.0.0.1:9/services/bench"
"#,
        ca = dir.ca_cert().display()
    );
    Ok(toml::from_str::<Config>(&text)?.notify)
}

/// The sink's kept deliveries, written a day ago (within the month the controller keeps
/// them), once: the events, the deliveries (delivered, then dead, then the backlog) and the kept
/// count, in one write transaction that moves the event counter past them.
async fn seed_notifications(app: &jitgate_controller::App) -> Result<()> {
    let have: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, COUNT(*) FROM notify_deliveries WHERE sink = $1 GROUP BY state \
         ORDER BY state",
    )
    .bind(SINK)
    .fetch_all(app.db.pool())
    .await?;
    let want = [
        ("dead", KEPT_DEAD),
        ("delivered", KEPT_DELIVERED),
        ("retrying", BACKLOG),
    ];
    if have.len() == want.len()
        && have
            .iter()
            .zip(want)
            .all(|((s, n), (ws, wn))| s == ws && *n == wn)
    {
        return Ok(());
    }
    let t = Instant::now();
    let n = KEPT_DELIVERED + KEPT_DEAD + BACKLOG;
    let at = now_ms() - 86_400_000;
    let mut w = app.db.begin().await?;
    sqlx::query("DELETE FROM notify_deliveries WHERE sink = $1")
        .bind(SINK)
        .execute(w.conn())
        .await?;
    let base: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'notify'")
        .fetch_one(w.conn())
        .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO notify_events (seq, id, event_type, order_key, body, people, created_at) \
         SELECT $2 + i, 'bench-' || ($2 + i), 'request.approved', \
         'request:bench-' || (i % 5000), '{}', '[]', $3 + i FROM n",
    )
    .bind(n)
    .bind(base)
    .bind(at)
    .execute(w.conn())
    .await?;
    sqlx::query(
        "INSERT INTO notify_deliveries (event_seq, sink, order_key, state, attempts, \
         next_attempt_at, delivered_at, last_kind, last_status, last_detail, last_attempt_at) \
         SELECT seq, $1, order_key, CASE WHEN seq > $5 THEN 'retrying' \
         WHEN seq > $2 THEN 'dead' ELSE 'delivered' END, 1, \
         CASE WHEN seq > $5 THEN $6 ELSE created_at + 50 END, \
         CASE WHEN seq > $2 THEN NULL ELSE created_at + 50 END, \
         CASE WHEN seq > $2 THEN 'http-5xx' ELSE 'delivered' END, \
         CASE WHEN seq > $2 THEN '5xx' ELSE '2xx' END, \
         CASE WHEN seq > $2 THEN 'HTTP 503' ELSE NULL END, created_at + 50 \
         FROM notify_events WHERE seq > $3 AND seq <= $4",
    )
    .bind(SINK)
    .bind(base + KEPT_DELIVERED)
    .bind(base)
    .bind(base + n)
    .bind(base + KEPT_DELIVERED + KEPT_DEAD)
    .bind(now_ms() + 3_600_000)
    .execute(w.conn())
    .await?;
    sqlx::query(
        "INSERT INTO notify_delivered (sink, delivered, last_delivered_at) VALUES ($1, $2, $3) \
         ON CONFLICT (sink) DO UPDATE SET delivered = $2, last_delivered_at = $3",
    )
    .bind(SINK)
    .bind(KEPT_DELIVERED)
    .bind(at + KEPT_DELIVERED + 50)
    .execute(w.conn())
    .await?;
    // Counted and fanned out (the fan-out's mark, migration 36), as the controller leaves
    // them: the worker must not fan them out again (the seeded deliveries are there). The
    // seed runs before any load, so no earlier event waits for its fan-out.
    sqlx::query("UPDATE counters SET value = $1 WHERE name IN ('notify', 'notify_fanned')")
        .bind(base + n)
        .execute(w.conn())
        .await?;
    w.commit().await?;
    eprintln!(
        "notifications: {KEPT_DELIVERED} delivered, {KEPT_DEAD} dead and {BACKLOG} retrying for {SINK} in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn count(app: &jitgate_controller::App, table: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(app.db.pool())
        .await?)
}

/// A controller whose history grew over weeks has a checkpointed database, not a WAL
/// holding the whole history.
async fn checkpoint(app: &jitgate_controller::App) -> Result<()> {
    for _ in 0..50 {
        use sqlx::Row;
        let r = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(app.db.pool())
            .await?;
        if r.try_get::<i64, _>(0)? == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}
