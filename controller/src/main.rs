//! `jit-controller`: initialise, run and administer the jitgate control plane.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jitgate_controller::auth::{self, Scope};
use jitgate_controller::model;
use jitgate_controller::state::{self, Config, StateDir};
use jitgate_controller::store::{Actor, Store, StoreOptions, TokenInfo};

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
    },
    /// Serve the HTTPS API until SIGINT/SIGTERM.
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
    /// Manage resource groups.
    #[command(subcommand, name = "rg")]
    Rg(RgCmd),
    /// Manage VMs.
    #[command(subcommand)]
    Vm(VmCmd),
    /// The agent fleet: VM, agent id, online/offline, last seen, interfaces, protected
    /// ports, active grants, audit head.
    Agents,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn open_store(dir: &StateDir) -> Result<Store> {
    let cfg = Config::load(dir)?;
    Ok(Store::open(
        &cfg.database_url(dir),
        &StoreOptions {
            max_connections: 2,
            sqlite_synchronous: cfg.sqlite_synchronous.clone(),
        },
    )
    .await?)
}

fn print_tokens(v: &[TokenInfo], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{:<22} {:<16} {:<10} {:<24} {:<25} {:<25}",
        "ID", "NAME", "ROLE", "SCOPE", "EXPIRES", "REVOKED"
    );
    for t in v {
        println!(
            "{:<22} {:<16} {:<10} {:<24} {:<25} {:<25}",
            t.id,
            t.name,
            t.role,
            t.scope,
            t.expires_time_utc.as_deref().unwrap_or("-"),
            t.revoked_time_utc.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let dir = StateDir(cli.state_dir.clone());
    match cli.cmd {
        Cmd::Init {
            listen,
            sans,
            database_url,
            agent_listen,
            agent_endpoint,
        } => {
            let cfg = Config {
                listen,
                database_url,
                agent_listen,
                agent_endpoint,
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
            eprintln!("jit-controller listening on https://{}", h.addr);
            if let Some(a) = h.agent_addr {
                eprintln!("agent channel on {a}");
            }
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            h.stop().await;
        }
        Cmd::Token(t) => {
            let store = open_store(&dir).await?;
            match t {
                TokenCmd::Create {
                    name,
                    role,
                    scope,
                    expires_in,
                } => {
                    let role = auth::parse_role(&role)?;
                    let scope = auth::parse_scope(&scope)?;
                    let expires = match expires_in {
                        Some(d) => {
                            let secs = model::parse_duration(&d)?;
                            if secs <= 0 {
                                bail!("--expires-in must be positive");
                            }
                            Some(model::now_ms() + secs * 1000)
                        }
                        None => None,
                    };
                    let (info, secret) = store
                        .create_token(&Actor::local(), &name, role, &scope, expires)
                        .await?;
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
                TokenCmd::List => print_tokens(&store.list_tokens().await?, cli.json)?,
                TokenCmd::Revoke { id } => {
                    store.revoke_token(&Actor::local(), &id).await?;
                    if !cli.json {
                        println!("revoked {id}");
                    }
                }
            }
            store.close().await;
        }
        Cmd::Rg(r) => {
            let store = open_store(&dir).await?;
            match r {
                RgCmd::Add { name, owner } => {
                    store.add_group(&Actor::local(), &name, &owner).await?;
                    if !cli.json {
                        println!("added resource group {name} (owner {owner})");
                    }
                }
                RgCmd::List => {
                    let v = store.list_groups().await?;
                    if cli.json {
                        let j: Vec<_> = v
                            .iter()
                            .map(|(n, o)| serde_json::json!({"name": n, "owner": o}))
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&j)?);
                    } else {
                        println!("{:<24} OWNER", "NAME");
                        for (n, o) in v {
                            println!("{n:<24} {o}");
                        }
                    }
                }
            }
            store.close().await;
        }
        Cmd::Vm(v) => {
            let store = open_store(&dir).await?;
            match v {
                VmCmd::Add {
                    name,
                    resource_group,
                    addresses,
                } => {
                    store
                        .add_vm(&Actor::local(), &name, &resource_group, &addresses)
                        .await?;
                    let (token, expires) =
                        store.create_enroll_token(&Actor::local(), &name).await?;
                    print_enroll(&name, &token, expires, cli.json, true);
                }
                VmCmd::EnrollToken { name } => {
                    let (token, expires) =
                        store.create_enroll_token(&Actor::local(), &name).await?;
                    print_enroll(&name, &token, expires, cli.json, false);
                }
                VmCmd::RevokeAgent { name } => {
                    let ids = store.revoke_agents(&Actor::local(), &name).await?;
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
                    let v = store.list_vms(&Scope::All).await?;
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
            store.close().await;
        }
        Cmd::Agents => {
            let store = open_store(&dir).await?;
            let v = store.list_agents(&Scope::All).await?;
            store.close().await;
            print_agents(&v, cli.json)?;
        }
    }
    Ok(())
}

fn print_enroll(vm: &str, token: &str, expires: i64, json: bool, added: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"vm": vm, "enrollmentToken": token,
                "expiresTimeUtc": model::fmt_time(expires)})
        );
    } else {
        if added {
            println!("added VM {vm}");
        }
        println!(
            "agent enrolment token for {vm} (single use, expires {}), shown only now:",
            model::fmt_time(expires)
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
