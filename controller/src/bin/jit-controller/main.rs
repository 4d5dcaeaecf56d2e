//! `jit-controller`: initialise, run and administer the jitgate control plane.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jitgate_api::terminal::safe;
use jitgate_controller::app::{App, Parts};
use jitgate_controller::authz::Caller;
use jitgate_controller::input;
use jitgate_controller::logging::{self, LogFormat};
use jitgate_controller::outbox;
use jitgate_controller::state::{self, Config, StateDir};
use jitgate_controller::tokens::TokenInfo;

mod backup;
mod certs;
mod keys;
mod prune;

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
    Token(TokenCmd),
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
    Rg(RgCmd),
    /// Manage VMs.
    #[command(subcommand)]
    Vm(VmCmd),
    /// The agent fleet: VM, agent id, online/offline, last seen, interfaces, protected
    /// ports, active grants, audit head.
    Agents,
    /// Notifications (docs/notifications.md): the delivery queue per sink, and dead
    /// deliveries re-driven.
    #[command(subcommand)]
    Notify(NotifyCmd),
    /// People's sign-in sessions (OpenID Connect, docs/identity.md).
    #[command(subcommand)]
    Session(SessionCmd),
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

#[derive(Subcommand)]
enum SessionCmd {
    /// Open sessions, newest first (never their credentials).
    List {
        /// Ended and expired sessions too.
        #[arg(long)]
        all: bool,
    },
    /// End a session now (ses_...): its credential stops working at once, and the person
    /// must sign in again.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum NotifyCmd {
    /// Deliveries per sink: queued, retrying, delivered, dead, and the last failure.
    Status,
    /// Attempt dead deliveries again (a running controller picks them up within a second).
    Retry {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; the secret is printed once and only its SHA-256 is stored.
    Create {
        /// Principal name (shown as requestor / caller).
        #[arg(long)]
        name: String,
        /// reader, requester or admin.
        #[arg(long)]
        role: String,
        /// `*`, `rg:GROUP` or `vm:NAME`.
        #[arg(long, default_value = "*")]
        scope: String,
        /// Lifetime as an ISO 8601 duration (e.g. P90D, PT8H); default: no expiry.
        #[arg(long)]
        expires_in: Option<String>,
        /// A group the token's principal belongs to (repeatable). Approval rules name
        /// groups (`group:NAME`), so whoever creates tokens decides who can approve: each
        /// creation is in the activity log. One person holding two tokens is two principals.
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<String>,
        /// The principal's email address: email notification sinks reach it when it
        /// requests access or an approval rule names it.
        #[arg(long)]
        email: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id (tok_...).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum RgCmd {
    /// Add a resource group with the owner who receives remediation requests.
    Add {
        name: String,
        #[arg(long)]
        owner: String,
    },
    /// List resource groups.
    List,
}

#[derive(Subcommand)]
enum VmCmd {
    /// Register a VM with its addresses (IPv4 and/or IPv6); prints a one-time agent
    /// enrolment token (valid 24 h).
    Add {
        name: String,
        #[arg(long)]
        resource_group: String,
        #[arg(long = "address", required = true)]
        addresses: Vec<IpAddr>,
    },
    /// List VMs.
    List,
    /// Issue a new one-time agent enrolment token for a VM (valid 24 h, single use).
    EnrollToken { name: String },
    /// Revoke the VM's agent credential: refused from then on, a live connection is closed.
    RevokeAgent { name: String },
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

fn print_tokens(v: &[TokenInfo], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{:<22} {:<16} {:<10} {:<24} {:<25} {:<25} GROUPS",
        "ID", "NAME", "ROLE", "SCOPE", "EXPIRES", "REVOKED"
    );
    for t in v {
        println!(
            "{:<22} {:<16} {:<10} {:<24} {:<25} {:<25} {}",
            t.id,
            safe(&t.name),
            t.role.as_str(),
            safe(&t.scope.to_string()),
            t.expires_time_utc.as_deref().unwrap_or("-"),
            t.revoked_time_utc.as_deref().unwrap_or("-"),
            if t.groups.is_empty() {
                "-".to_string()
            } else {
                safe(&t.groups.join(",")).into_owned()
            }
        );
    }
    Ok(())
}

fn print_sessions(v: &[jitgate_api::SessionView], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<24} {:<6} {:<25} {:<25} {:<16} ROLES",
        "ID", "PERSON", "CLIENT", "EXPIRES", "ENDED", "REASON"
    );
    for s in v {
        let roles: Vec<String> = s
            .grants
            .iter()
            .map(|g| format!("{} on {}", g.role, g.scope))
            .collect();
        println!(
            "{:<36} {:<24} {:<6} {:<25} {:<25} {:<16} {}",
            s.id,
            safe(&s.display_name),
            s.client,
            s.expires_time_utc,
            s.ended_time_utc.as_deref().unwrap_or("-"),
            s.end_reason.as_ref().map_or("-", |r| r.as_str()),
            if roles.is_empty() {
                "-".to_string()
            } else {
                safe(&roles.join(", ")).into_owned()
            }
        );
        println!("    {}", safe(&s.principal));
    }
    Ok(())
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
        Cmd::Token(t) => {
            let app = open_app(&dir).await?;
            let local = Caller::local();
            match t {
                TokenCmd::Create {
                    name,
                    role,
                    scope,
                    expires_in,
                    groups,
                    email,
                } => {
                    let role = input::parse_role(&role)?;
                    let scope = input::parse_scope(&scope)?;
                    if let Some(e) = &email
                        && e.trim().parse::<jitgate_notify::EmailAddress>().is_err()
                    {
                        bail!("--email {e:?} is not an email address");
                    }
                    let expires = match expires_in {
                        Some(d) => {
                            let secs = input::parse_duration(&d)?;
                            if secs <= 0 {
                                bail!("--expires-in must be positive");
                            }
                            Some(jitgate_api::time::now_ms() + secs * 1000)
                        }
                        None => None,
                    };
                    let (info, secret) = app
                        .tokens
                        .create(&local, &name, role, &scope, expires, &groups)
                        .await?;
                    if let Some(e) = &email {
                        app.tokens.set_email(&local, &info.id, Some(e)).await?;
                    }
                    if cli.json {
                        println!("{}", serde_json::json!({"token": info, "secret": secret}));
                    } else {
                        println!(
                            "created {} for {} ({} on {})",
                            info.id, info.name, info.role, info.scope
                        );
                        println!("token, shown only now:");
                        println!("{secret}");
                    }
                }
                TokenCmd::List => print_tokens(&app.tokens.list(&local).await?, cli.json)?,
                TokenCmd::Revoke { id } => {
                    app.tokens.revoke(&local, &id).await?;
                    if !cli.json {
                        println!("revoked {id}");
                    }
                }
            }
            app.close().await;
        }
        Cmd::Rg(r) => {
            let app = open_app(&dir).await?;
            let local = Caller::local();
            match r {
                RgCmd::Add { name, owner } => {
                    app.inventory.add_group(&local, &name, &owner).await?;
                    if !cli.json {
                        println!("added resource group {name} (owner {owner})");
                    }
                }
                RgCmd::List => {
                    let v = app.inventory.groups(&local).await?;
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        println!("{:<24} OWNER", "NAME");
                        for g in v {
                            println!("{:<24} {}", g.name, g.owner);
                        }
                    }
                }
            }
            app.close().await;
        }
        Cmd::Vm(v) => {
            let app = open_app(&dir).await?;
            let local = Caller::local();
            match v {
                VmCmd::Add {
                    name,
                    resource_group,
                    addresses,
                } => {
                    app.inventory
                        .add_vm(&local, &name, &resource_group, &addresses)
                        .await?;
                    let (token, expires) = app.fleet.create_enroll_token(&local, &name).await?;
                    print_enroll(&name, &token, expires, cli.json, true);
                }
                VmCmd::EnrollToken { name } => {
                    let (token, expires) = app.fleet.create_enroll_token(&local, &name).await?;
                    print_enroll(&name, &token, expires, cli.json, false);
                }
                VmCmd::RevokeAgent { name } => {
                    let ids = app.fleet.revoke_agents(&local, &name).await?;
                    if cli.json {
                        println!(
                            "{}",
                            serde_json::json!({"vm": name, "revokedAgentIds": ids})
                        );
                    } else {
                        for id in ids {
                            println!("revoked agent {id} of VM {name}");
                        }
                    }
                }
                VmCmd::List => {
                    let v = app.inventory.vms(&local).await?;
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        println!(
                            "{:<24} {:<20} {:<16} {:<9} ADDRESSES",
                            "NAME", "RESOURCE GROUP", "POLICY", "AGENT"
                        );
                        for x in v {
                            println!(
                                "{:<24} {:<20} {:<16} {:<9} {}",
                                x.name,
                                x.resource_group,
                                x.policy_source.map(|p| p.as_str()).unwrap_or("-"),
                                x.status.as_str(),
                                x.addresses.join(" ")
                            );
                        }
                    }
                }
            }
            app.close().await;
        }
        Cmd::Session(c) => {
            let app = open_app(&dir).await?;
            let local = Caller::local();
            let res = match c {
                SessionCmd::List { all } => app
                    .sessions
                    .list(&local, all)
                    .await
                    .map(|v| print_sessions(&v, cli.json)),
                SessionCmd::Revoke { id } => app.sessions.revoke(&local, &id).await.map(|()| {
                    if !cli.json {
                        println!("revoked {id}");
                    }
                    Ok(())
                }),
            };
            app.close().await;
            res??;
        }
        Cmd::Agents => {
            let app = open_app(&dir).await?;
            let v = app.fleet.agents(&Caller::local()).await?;
            app.close().await;
            print_agents(&v, cli.json)?;
        }
        Cmd::Notify(n) => {
            let app = open_app(&dir).await?;
            let res = match n {
                NotifyCmd::Status => outbox::status::status(&app.db)
                    .await
                    .map(|v| print_notify(&v, cli.json)),
                NotifyCmd::Retry { sink } => outbox::status::retry(&app.db, sink.as_deref())
                    .await
                    .map(|n| {
                        if cli.json {
                            println!("{}", serde_json::json!({"retried": n}));
                        } else {
                            println!("{n} dead deliveries will be attempted again");
                        }
                        Ok(())
                    }),
            };
            app.close().await;
            res??;
        }
    }
    Ok(())
}

fn print_notify(v: &[jitgate_api::SinkStatus], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:>8} {:>9} {:>10} {:>6}  {:<20}  {:<20}  LAST FAILURE",
        "SINK",
        "QUEUED",
        "RETRYING",
        "IN FLIGHT",
        "DELIVERED",
        "DEAD",
        "OLDEST WAITING",
        "LAST DELIVERED"
    );
    let or_dash = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
    for s in v {
        let last = s.last_failure.as_ref().map_or_else(
            || "-".to_string(),
            |f| {
                format!(
                    "{} {} at {}",
                    f.kind,
                    f.status_class.as_deref().unwrap_or(""),
                    f.time_utc
                )
            },
        );
        println!(
            "{:<24} {:>8} {:>8} {:>9} {:>10} {:>6}  {:<20}  {:<20}  {last}",
            s.name,
            s.queued,
            s.retrying,
            s.in_flight,
            s.delivered,
            s.dead,
            or_dash(&s.oldest_pending_utc),
            or_dash(&s.last_delivered_utc)
        );
    }
    Ok(())
}

fn print_enroll(vm: &str, token: &str, expires: i64, json: bool, added: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"vm": vm, "enrollmentToken": token,
                "expiresTimeUtc": jitgate_api::time::format(expires)})
        );
    } else {
        if added {
            println!("added VM {vm}");
        }
        println!(
            "agent enrolment token for {vm} (single use, expires {}), shown only now:",
            jitgate_api::time::format(expires)
        );
        println!("{token}");
    }
}

fn print_agents(v: &[jitgate_api::Agent], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<36} {:<8} {:<25} {:<20} {:<24} {:>6} AUDIT",
        "VM", "AGENT", "STATE", "LAST SEEN", "INTERFACES", "PROTECTED", "GRANTS"
    );
    for a in v {
        println!(
            "{:<16} {:<36} {:<8} {:<25} {:<20} {:<24} {:>6} {}",
            a.virtual_machine,
            a.agent_id,
            a.connection.as_str(),
            a.last_seen_time_utc.as_deref().unwrap_or("-"),
            if a.interfaces.is_empty() {
                "-".to_string()
            } else {
                a.interfaces.join(",")
            },
            if a.protected_ports.is_empty() {
                "-".to_string()
            } else {
                a.protected_ports.join(",")
            },
            a.active_grants
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            match (&a.audit_seq, &a.audit_head) {
                (Some(s), Some(h)) => format!("{s} {}", h.get(..12).unwrap_or(h)),
                _ => "-".into(),
            }
        );
    }
    Ok(())
}
