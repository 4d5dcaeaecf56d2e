//! `jit-controller`: initialise, run and administer the jitgate control plane.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jitgate_controller::app::{App, Parts};
use jitgate_controller::authz::Caller;
use jitgate_controller::input;
use jitgate_controller::logging::{self, LogFormat};
use jitgate_controller::state::{self, Config, StateDir};

mod agents;
mod backup;
mod certs;
mod inventory;
mod keys;
mod notify;
mod prune;
mod sessions;
mod tokens;

/// jitgate control plane: keeps JIT policies, checks access requests against policy and
/// rights, records request history and a hash-chained activity log, and serves the HTTPS API
/// that the `jit` CLI talks to.
#[derive(Parser)]
#[command(name = "jit-controller", version)]
struct Cli {
    /// State directory (database, TLS material, signing key, controller.toml).
    #[arg(long, global = true, env = "JIT_CONTROLLER_STATE_DIR", default_value = state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Log lines as `text` or `json` (one object per line); default: `log_format` in
    /// controller.toml, else text. The filter is `JIT_LOG`, else `log_filter`, else info.
    #[arg(long, global = true, env = "JIT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the state directory: database, CA + server certificate, Ed25519 grant-signing
    /// key, and an admin API token, printed once.
    Init {
        /// Address the API will listen on (written to controller.toml).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Database URL (default: jit.db in the state directory).
        #[arg(long)]
        database_url: Option<String>,
        /// Address the agent channel will listen on (written to controller.toml).
        #[arg(long, default_value = "127.0.0.1:8444")]
        agent_listen: String,
        /// host:port agents are told to dial at enrolment (default: the bound agent_listen).
        #[arg(long)]
        agent_endpoint: Option<String>,
        /// Address of the metrics listener (plain HTTP: /metrics, /healthz, /readyz), written
        /// to controller.toml; `off` for none.
        #[arg(long, default_value = "127.0.0.1:9465")]
        metrics_listen: String,
    },
    /// Serve the HTTPS API until SIGINT/SIGTERM. SIGHUP re-reads `log_filter` from
    /// controller.toml (`systemctl reload jit-controller`).
    Run {
        /// Override the configured listen address.
        #[arg(long)]
        listen: Option<String>,
        /// Override the configured agent channel address.
        #[arg(long)]
        agent_listen: Option<String>,
    },
    /// Manage API tokens.
    #[command(subcommand)]
    Token(tokens::TokenCmd),
    /// Rotate the grant-signing key (rotate, status, retire).
    ///
    /// The key signs every grant, revocation and policy agents apply. A rotation is `rotate`
    /// (a new key, announced to agents signed by the current one; they keep it next to the
    /// pinned key and acknowledge), then `retire` (once every connected agent acknowledged:
    /// the new key signs from then on, agents refuse the old one, and its private half is
    /// destroyed). Agents offline meanwhile are sent both steps when they return; agents
    /// below protocol level 4 cannot follow and must be re-enrolled after the switch. A key
    /// that may be compromised is replaced by re-enrolment, not rotated
    /// (docs/operations.md, "Rotation").
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// The server certificate: `renew-server` issues a new one from the CA and installs it;
    /// a running controller serves it to new connections without a restart
    /// (docs/operations.md, "Rotation").
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Manage resource groups.
    #[command(subcommand, name = "rg")]
    Rg(inventory::RgCmd),
    /// Manage VMs.
    #[command(subcommand)]
    Vm(inventory::VmCmd),
    /// The agent fleet: VM, agent id, online/offline, last seen, interfaces, protected
    /// ports, active grants, audit head.
    Agents,
    /// Notifications (docs/notifications.md): the delivery queue per sink, and dead
    /// deliveries re-driven.
    #[command(subcommand)]
    Notify(notify::NotifyCmd),
    /// People's sign-in sessions (OpenID Connect, docs/identity.md).
    #[command(subcommand)]
    Session(sessions::SessionCmd),
    /// Write an online, consistent backup of the database (SQLite or PostgreSQL) to FILE:
    /// one snapshot while the controller keeps serving, created with mode 0600 (it holds
    /// people's addresses and the activity log; never a secret's clear text), never over an
    /// existing file. Keys, certificates and controller.toml are files in the state
    /// directory: back them up as well (docs/operations.md, "Backup and restore").
    Backup {
        /// Where to write (must not exist).
        file: PathBuf,
    },
    /// Restore a backup into an empty database (this state directory without controller.db,
    /// or the empty PostgreSQL database its database_url names) in one transaction, then
    /// verify the activity log's chain and signed checkpoints with this state directory's
    /// key. A damaged or changed file, or a database that is not empty, changes nothing.
    Restore {
        /// The backup (from `jit-controller backup`).
        file: PathBuf,
    },
    /// Delete the records past their retention (`[retention]` in controller.toml;
    /// docs/operations.md, "Retention"): ended requests with their grants and approvals,
    /// agent audit and connection records, compliance evaluations, delivered notifications,
    /// ended sessions, in short transactions while the controllers keep serving. The
    /// activity log (only with `activity_days` set) is pruned up to a signed checkpoint,
    /// after the pruned range was written to --archive FILE and verified. Prints per kind
    /// how many rows went; recorded in the activity log.
    Prune {
        /// Change nothing: print what would go.
        #[arg(long)]
        dry_run: bool,
        /// Where the pruned range of the activity log goes (new file, mode 0600; `jit audit
        /// verify --offline FILE` verifies it). Without it the activity log is not pruned.
        #[arg(long, value_name = "FILE")]
        archive: Option<PathBuf>,
    },
    /// Print a one-time portal sign-in link (docs/portal.md): for first setup and demos
    /// without an identity provider. It works once, within 10 minutes, and signs in as the
    /// principal link:NAME (which can never approve) with one role and scope. Both making
    /// and using it are in the activity log. Needs public_url in controller.toml; off by
    /// default once [oidc] is configured (login_links = true turns it on).
    LoginLink {
        /// The name of the principal (link:NAME).
        #[arg(long)]
        name: String,
        /// reader, requester or admin.
        #[arg(long)]
        role: String,
        /// *, rg:GROUP or vm:NAME.
        #[arg(long, default_value = "*")]
        scope: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The configuration, if the state directory has a readable one (the command itself
    // reports a bad or missing one).
    let file = Config::load(&StateDir(cli.state_dir.clone())).ok();
    let format = cli
        .log_format
        .or(file.as_ref().map(|c| c.log_format))
        .unwrap_or_default();
    let filter = log_filter(file.as_ref());
    let log = match logging::init(format, filter.as_deref()) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors can carry names from the database (agents, VMs, controllers).
            eprintln!(
                "error: {}",
                jitgate_api::terminal::safe_lines(&format!("{e:#}"))
            );
            ExitCode::from(1)
        }
    }
}

/// The log filter: `JIT_LOG` when set, else controller.toml's `log_filter`.
fn log_filter(file: Option<&Config>) -> Option<String> {
    let env = std::env::var("JIT_LOG").ok().filter(|f| !f.is_empty());
    env.or_else(|| file.and_then(|c| c.log_filter.clone()))
}

/// SIGHUP (`systemctl reload jit-controller`): the log filter from controller.toml again.
/// Nothing else is re-read; a bad file or filter is logged and changes nothing.
fn reload_log_filter(dir: &StateDir, log: &logging::LogControl) {
    if std::env::var("JIT_LOG").is_ok_and(|f| !f.is_empty()) {
        tracing::warn!("log filter not reloaded: JIT_LOG is set and wins over log_filter");
        return;
    }
    let cfg = match Config::load(dir) {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::warn!(error = %e, "log filter not reloaded");
            return;
        }
    };
    let from = log.filter();
    let to = cfg
        .log_filter
        .unwrap_or_else(|| logging::DEFAULT_FILTER.to_string());
    if from == to {
        tracing::info!(filter = %to, "log filter unchanged");
        return;
    }
    // Logged before the change, so it shows under the filter the reader is watching.
    tracing::info!(from = %from, to = %to, "log filter changing");
    if let Err(e) = log.set_filter(&to) {
        tracing::warn!(error = %e, filter = %from, "log filter not reloaded");
    }
}

/// The controller's services for an administration command (no keys, no listeners).
/// Opens the database, runs `f` on it, and closes it whatever `f` answered.
pub(crate) async fn with_app<T>(
    dir: &StateDir,
    f: impl AsyncFnOnce(&App) -> Result<T>,
) -> Result<T> {
    let app = open_app(dir).await?;
    let r = f(&app).await;
    app.close().await;
    r
}

pub(crate) async fn open_app(dir: &StateDir) -> Result<App> {
    let cfg = Config::load(dir)?;
    let parts = Parts {
        token_roles: cfg.oidc.as_ref().and_then(|o| o.token_roles.clone()),
        login_links: cfg.login_links_enabled(),
        key_switch_grace: cfg.keys.switch_grace(),
        ..Parts::default()
    };
    let app = App::open(&cfg.database_url(dir), &cfg.db_options(2), parts).await?;
    if app.db.backend() == jitgate_controller::store::Backend::Postgres {
        // Which agents are connected to the cluster's controllers (`agents`, `vm list`).
        jitgate_controller::cluster::read_presence(&app.db, &app.presence).await?;
    }
    Ok(app)
}

async fn run(cli: Cli, log: logging::LogControl) -> Result<()> {
    let dir = StateDir(cli.state_dir.clone());
    match cli.cmd {
        Cmd::Init {
            listen,
            sans,
            database_url,
            agent_listen,
            agent_endpoint,
            metrics_listen,
        } => {
            let cfg = Config {
                listen,
                database_url,
                agent_listen,
                agent_endpoint,
                metrics_listen: (metrics_listen != "off").then_some(metrics_listen),
                log_format: cli.log_format.unwrap_or_default(),
                ..Config::default()
            };
            let out = state::init(&dir, &cfg, &sans).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"stateDir": dir.0, "caCertificate": dir.ca_cert(),
                        "adminTokenId": out.admin.id, "adminToken": out.admin_token})
                );
            } else {
                println!("initialised {}", dir.0.display());
                println!(
                    "CA certificate (give to operators): {}",
                    dir.ca_cert().display()
                );
                println!("grant-signing public key: {}", dir.signing_pub().display());
                println!(
                    "activity checkpoint public key (for jit audit verify --offline --key): {}",
                    dir.checkpoint_pub().display()
                );
                println!("admin token ({}), shown only now:", out.admin.id);
                println!("{}", out.admin_token);
            }
        }
        Cmd::Run {
            listen,
            agent_listen,
        } => {
            let mut cfg = Config::load(&dir)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(l) = agent_listen {
                cfg.agent_listen = l;
            }
            let h = jitgate_controller::start(&dir, &cfg).await?;
            // A log line, not a bare print: with `--log-format json` every line is JSON.
            tracing::info!(
                api = %h.addr,
                agent_channel = %h.agent_addr,
                metrics = h.metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
                "jit-controller running"
            );
            use tokio::signal::unix::{SignalKind, signal};
            let mut term =
                signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
            let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = hup.recv() => reload_log_filter(&dir, &log),
                }
            }
            tracing::info!("shutting down");
            h.stop().await;
        }
        Cmd::Keys(k) => keys::run(&dir, k, cli.json).await?,
        Cmd::Token(t) => tokens::run(&dir, t, cli.json).await?,
        Cmd::Rg(r) => inventory::run_rg(&dir, r, cli.json).await?,
        Cmd::Vm(v) => inventory::run_vm(&dir, v, cli.json).await?,
        Cmd::Session(c) => sessions::run(&dir, c, cli.json).await?,
        Cmd::Agents => agents::run(&dir, cli.json).await?,
        Cmd::Notify(n) => notify::run(&dir, n, cli.json).await?,
        Cmd::Certs(c) => certs::run(&dir, c, cli.json)?,
        Cmd::Backup { file } => {
            backup::backup(&dir, &file, cli.json).await?;
        }
        Cmd::Restore { file } => {
            backup::restore(&dir, &file, cli.json).await?;
        }
        Cmd::Prune { dry_run, archive } => {
            prune::prune(&dir, dry_run, archive, cli.json).await?;
        }
        Cmd::LoginLink { name, role, scope } => {
            let cfg = Config::load(&dir)?;
            let Some(public) = cfg.public_url.clone() else {
                bail!(
                    "public_url is not set in controller.toml: the link must name the address \
                     browsers reach the portal at (e.g. public_url = \"https://jit.example.net\")"
                );
            };
            let role = input::parse_role(&role)?;
            let scope = input::parse_scope(&scope)?;
            let app = open_app(&dir).await?;
            let link = app
                .sessions
                .create_link(&Caller::local(), &name, role, &scope)
                .await;
            app.close().await;
            let link = link?;
            let url = format!(
                "{}/auth/link?t={}",
                public.trim_end_matches('/'),
                link.secret
            );
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"id": link.id, "url": url,
                        "expiresTimeUtc": jitgate_api::time::format(link.expires_ms)})
                );
            } else {
                println!(
                    "one-time sign-in link for link:{name} ({role} on {scope}), valid until {}:",
                    jitgate_api::time::format(link.expires_ms)
                );
                println!("{url}");
            }
        }
    }
    Ok(())
}
