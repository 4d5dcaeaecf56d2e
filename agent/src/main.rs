//! `jit-agent`: the jitgate host daemon and its local admin commands.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use jitgate_agent::admin::{self, Client, ErrorCode, GrantRequest, Request, Response};
use jitgate_agent::config::{self, AgentConfig, Overrides};
use jitgate_agent::daemon;
use jitgate_common::MaxConnections;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Exit codes scripts can rely on.
const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_TAMPERED: u8 = 4;

#[derive(Parser)]
#[command(
    name = "jit-agent",
    version,
    about = "jitgate host agent: keeps management ports closed until a just-in-time grant opens them",
    long_about = "jitgate host agent. `run` starts the daemon: it loads and pins the XDP program, \
restores grants from its journal and enforces them per packet. The other commands talk to a \
running agent over its root-only admin socket; they are the local break-glass path.\n\n\
Exit codes: 0 ok, 1 refused by the agent (bad input, unknown id, failure), 2 usage error, \
3 agent unreachable, 4 audit log does not verify."
)]
struct Cli {
    /// The agent's admin socket [default: the config's, else /run/jitgate/agent.sock].
    #[arg(long, global = true, env = "JIT_AGENT_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (SIGTERM/SIGINT stop it; enforcement stays in place).
    Run(RunArgs),
    /// Open (protocol, port) to a source prefix for a while: a local, audited grant.
    Grant(GrantArgs),
    /// End a grant now and close the sessions it admitted (unless another grant covers them).
    Revoke {
        /// Grant id (from `grant` or `grants`).
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List active grants.
    Grants {
        #[arg(long)]
        json: bool,
    },
    /// Interfaces and attach mode, protected ports, program, counters, grants and flows.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the audit log (`audit verify` checks its hash chain).
    Audit(AuditArgs),
    /// Remove enforcement from every interface. Audited. The only way to open protected ports
    /// to everyone again.
    Detach {
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Where the audit log is, if no agent is running.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Enrol with a controller, once: obtains this agent's certificate with a one-time token,
    /// and pins the controller's CA and grant-signing key. Restart the agent afterwards.
    Enroll {
        /// The controller's API, host:port.
        #[arg(long)]
        controller: String,
        /// The controller's CA certificate (PEM); the only trust anchor used.
        #[arg(long)]
        ca: PathBuf,
        /// The one-time enrolment token from `jit-controller vm add` / `vm enroll-token`.
        #[arg(long, env = "JIT_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, conflicts_with = "state_dir")]
        config: Option<PathBuf>,
        /// Where the enrolment is stored [default: the config's state_dir].
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a configuration file and print the result.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// TOML configuration (see agent/jit-agent.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Interface name or glob to enforce on (repeatable; replaces the file's list). Include
    /// tunnel devices (wg*, gre*, tun*): traffic they decapsulate never crosses the NIC's XDP
    /// hook. The program is picked by link type; interfaces that appear later are attached too.
    #[arg(long = "interface", value_name = "IFACE")]
    interfaces: Vec<String>,
    /// Protected port, e.g. 22/tcp:keep or 3389/*:cut (repeatable; replaces the file's list).
    #[arg(long = "protect", value_name = "PORT/PROTO[:keep|cut]")]
    protect: Vec<String>,
    /// bpffs directory for the pins (root mount namespace, not under /sys).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Directory for the grant journal and the audit log.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Prometheus endpoint (read-only), e.g. 127.0.0.1:9464.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Idle timeout of `keep` sessions after their grant ended, e.g. 15m.
    #[arg(long)]
    flow_idle_timeout: Option<String>,
    /// How often an enrolled agent signs its audit chain head (if it moved), e.g. 5m.
    #[arg(long)]
    audit_checkpoint_interval: Option<String>,
    /// A controller's agent endpoint, host:port (repeatable; replaces the file's
    /// `controller_endpoints`, and the list the enrolment and the controllers give). When the
    /// controller in use goes away the agent tries the next at once (docs/ha.md).
    #[arg(long = "controller-endpoint", value_name = "HOST:PORT")]
    controller_endpoints: Vec<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[derive(Args)]
struct GrantArgs {
    /// PORT[/tcp|/udp|/*]; tcp when omitted.
    #[arg(long)]
    port: String,
    /// Source address or CIDR prefix (IPv4 or IPv6).
    #[arg(long)]
    source: String,
    /// How long, e.g. 30m, 1h (at most the host's max_grant).
    #[arg(long, conflicts_with = "until", required_unless_present = "until")]
    duration: Option<String>,
    /// End time, RFC 3339 (2026-11-27T18:00:00Z).
    #[arg(long)]
    until: Option<String>,
    /// Why: recorded in the audit log.
    #[arg(long)]
    justification: Option<String>,
    /// Admit at most N new connections (TCP connections, UDP flows); unlimited when omitted.
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AuditArgs {
    #[command(subcommand)]
    verify: Option<AuditCmd>,
    /// Keep printing new records as they are written.
    #[arg(long)]
    follow: bool,
    /// Only the last N records.
    #[arg(long)]
    tail: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain; says where it breaks. With --state-dir, offline (no agent).
    Verify {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("jit-agent: error: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_REFUSED, format!("starting the runtime: {e}")),
    };
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> ExitCode {
    let explicit_socket = cli.socket.clone();
    let socket = cli
        .socket
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET));
    let cli = (socket, cli.cmd);
    match cli.1 {
        Cmd::Run(args) => run(args, explicit_socket).await,
        Cmd::CheckConfig { config } => {
            match AgentConfig::load(Some(&config), &Overrides::default()) {
                Ok(c) => {
                    println!("{c:#?}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_USAGE, e),
            }
        }
        Cmd::Grant(g) => grant(&cli.0, g).await,
        Cmd::Revoke { id, json } => simple(&cli.0, Request::Revoke { id }, json).await,
        Cmd::Grants { json } => simple(&cli.0, Request::Grants, json).await,
        Cmd::Status { json } => simple(&cli.0, Request::Status, json).await,
        Cmd::Audit(a) => match a.verify {
            Some(AuditCmd::Verify {
                state_dir: Some(dir),
                json,
            }) => print_response(
                &Response::Verified(match jitgate_agent::audit::verify_state_dir(&dir) {
                    Ok(v) => v,
                    Err(e) => return fail(EXIT_TAMPERED, e),
                }),
                json,
            ),
            Some(AuditCmd::Verify {
                state_dir: None,
                json,
            }) => simple(&cli.0, Request::AuditVerify, json).await,
            None => audit(&cli.0, a.follow, a.tail, a.json).await,
        },
        Cmd::Enroll {
            controller,
            ca,
            token,
            config,
            state_dir,
        } => {
            let state_dir = match (state_dir, config) {
                (Some(d), _) => d,
                (None, Some(c)) => {
                    let over = Overrides {
                        interfaces: vec!["*".into()],
                        ..Default::default()
                    };
                    match AgentConfig::load(Some(&c), &over) {
                        Ok(cfg) => cfg.state_dir,
                        Err(e) => return fail(EXIT_USAGE, e),
                    }
                }
                (None, None) => PathBuf::from(config::DEFAULT_STATE_DIR),
            };
            match jitgate_agent::enroll::enroll(&controller, &ca, token.trim(), &state_dir).await {
                Ok(e) => {
                    println!(
                        "enrolled: agent {} for vm {}; controller channel {}",
                        e.agent_id, e.vm, e.endpoint
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_REFUSED, e),
            }
        }
        Cmd::Detach {
            config,
            pin_dir,
            state_dir,
            yes,
        } => detach(&cli.0, config, pin_dir, state_dir, yes).await,
    }
}

async fn run(args: RunArgs, socket: Option<PathBuf>) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let over = Overrides {
        interfaces: args.interfaces,
        protect: args.protect,
        pin_dir: args.pin_dir,
        state_dir: args.state_dir,
        socket,
        metrics: args.metrics,
        flow_idle_timeout: args.flow_idle_timeout,
        audit_checkpoint_interval: args.audit_checkpoint_interval,
        controller_endpoints: args.controller_endpoints,
    };
    let cfg = match AgentConfig::load(args.config.as_deref(), &over) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    match daemon::run(cfg).await.context("jit-agent") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_REFUSED, format!("{e:#}")),
    }
}

async fn connect(socket: &std::path::Path) -> Result<Client, ExitCode> {
    Client::connect(socket)
        .await
        .map_err(|e| fail(EXIT_UNREACHABLE, e))
}

async fn grant(socket: &std::path::Path, g: GrantArgs) -> ExitCode {
    // Parse everything before talking to the agent: bad input never leaves this process.
    let (port, protocol) = match admin::parse_port_arg(&g.port) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let source = match admin::parse_source_arg(&g.source) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let duration_secs = match &g.duration {
        Some(d) => match config::parse_duration("--duration", d) {
            Ok(d) if d.as_secs() == 0 => {
                return fail(EXIT_USAGE, "--duration must be at least one second");
            }
            Ok(d) => Some(d.as_secs()),
            Err(e) => return fail(EXIT_USAGE, e),
        },
        None => None,
    };
    let until = match &g.until {
        Some(u) => match OffsetDateTime::parse(u, &Rfc3339) {
            Ok(t) => Some(t),
            Err(_) => {
                return fail(
                    EXIT_USAGE,
                    format!("--until {u:?} is not an RFC 3339 time (2026-11-27T18:00:00Z)"),
                );
            }
        },
        None => None,
    };
    let max_connections = match &g.max_connections {
        Some(n) => match n.parse::<MaxConnections>() {
            Ok(m) => Some(m),
            Err(e) => return fail(EXIT_USAGE, format!("--max-connections {n:?}: {e}")),
        },
        None => None,
    };
    let req = Request::Grant(GrantRequest {
        port,
        protocol,
        source,
        duration_secs,
        until,
        justification: g.justification,
        max_connections,
    });
    let mut c = match connect(socket).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.call(&req).await {
        Ok(resp) => print_response(&resp, g.json),
        Err(e) => fail(EXIT_UNREACHABLE, e),
    }
}

async fn simple(socket: &std::path::Path, req: Request, json: bool) -> ExitCode {
    let mut c = match connect(socket).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.call(&req).await {
        Ok(resp) => print_response(&resp, json),
        Err(e) => fail(EXIT_UNREACHABLE, e),
    }
}

async fn audit(
    socket: &std::path::Path,
    follow: bool,
    tail: Option<usize>,
    json: bool,
) -> ExitCode {
    let mut c = match connect(socket).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = c.send(&Request::Audit { follow, tail }).await {
        return fail(EXIT_UNREACHABLE, e);
    }
    loop {
        match c.recv().await {
            Ok(Some(Response::Audit { line })) => {
                if json {
                    println!("{}", serde_json::to_string(&line).unwrap_or_default());
                } else {
                    let b = &line.body;
                    let what = [
                        b.source.clone(),
                        b.protocol
                            .as_ref()
                            .zip(b.port)
                            .map(|(p, n)| format!("{n}/{p}")),
                        b.grant_id.as_ref().map(|g| format!("grant {g}")),
                        b.reason.clone(),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("  ");
                    println!(
                        "{:>6}  {}  {:<22} {:<24} {}",
                        b.seq,
                        b.time.format(&Rfc3339).unwrap_or_default(),
                        b.kind,
                        b.actor,
                        what
                    );
                }
            }
            Ok(Some(Response::AuditEnd)) | Ok(None) => return ExitCode::SUCCESS,
            Ok(Some(other)) => return print_response(&other, json),
            Err(e) => return fail(EXIT_UNREACHABLE, e),
        }
    }
}

async fn detach(
    socket: &std::path::Path,
    config: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    yes: bool,
) -> ExitCode {
    if !yes {
        return fail(
            EXIT_USAGE,
            "detach opens every protected port to everyone; add --yes to confirm",
        );
    }
    let (pin_dir, cfg_state) = match (&config, &pin_dir) {
        (Some(c), _) => {
            // A config without interfaces is fine for detach.
            let over = Overrides {
                interfaces: vec!["*".into()],
                ..Default::default()
            };
            match AgentConfig::load(Some(c), &over) {
                Ok(cfg) => (cfg.pin_dir, Some(cfg.state_dir)),
                Err(e) => return fail(EXIT_USAGE, e),
            }
        }
        (None, Some(p)) => (p.clone(), None),
        (None, None) => return fail(EXIT_USAGE, "give --config FILE or --pin-dir DIR"),
    };
    // A running agent detaches itself (and stops), so it does not re-attach.
    if let Ok(mut c) = Client::connect(socket).await {
        return match c.call(&Request::Detach).await {
            Ok(resp) => print_response(&resp, false),
            Err(e) => fail(EXIT_UNREACHABLE, e),
        };
    }
    let state_dir = state_dir
        .or(cfg_state)
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_STATE_DIR));
    let actor = format!("local:uid{}", nix::unistd::getuid());
    match daemon::detach_offline(&pin_dir, &state_dir, &actor) {
        Ok(()) => {
            println!(
                "detached: enforcement removed ({}); recorded in {}",
                pin_dir.display(),
                state_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_REFUSED, e),
    }
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn print_response(resp: &Response, json: bool) -> ExitCode {
    if let Response::Error { code, message } = resp {
        if json {
            println!("{}", serde_json::to_string(resp).unwrap_or_default());
        }
        let exit = if *code == ErrorCode::Tampered {
            EXIT_TAMPERED
        } else {
            EXIT_REFUSED
        };
        return fail(exit, message);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(resp).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    match resp {
        Response::Granted { grants } => {
            for g in grants {
                println!("{}", g.id);
            }
        }
        Response::Revoked { id, flows_cut } => {
            println!("revoked {id} ({flows_cut} session(s) closed)")
        }
        Response::Grants {
            grants,
            scheduled,
            connections,
        } => {
            println!(
                "{:<36}  {:<10} {:<28} {:<20} {:<10} {:<11} REQUESTER",
                "ID", "PORT", "SOURCE", "ENDS (UTC)", "ORIGIN", "CONNS"
            );
            for g in grants {
                // used/limit for limited grants, `-` for unlimited ones.
                let conns = match (g.max_connections, connections.iter().find(|c| c.id == g.id)) {
                    (Some(_), Some(c)) => format!("{}/{}", c.admitted, c.limit),
                    (Some(l), None) => format!("?/{l}"),
                    (None, _) => "-".to_string(),
                };
                println!(
                    "{:<36}  {:<10} {:<28} {:<20} {:<10} {:<11} {}",
                    g.id,
                    format!("{}/{}", g.port, g.protocol),
                    g.source.to_string(),
                    fmt_time(g.end),
                    g.origin.as_str(),
                    conns,
                    g.requester
                );
            }
            if !scheduled.is_empty() {
                println!();
                println!(
                    "{:<36}  {:<10} {:<28} {:<20} {:<20} REQUESTER",
                    "SCHEDULED", "PORT", "SOURCE", "OPENS (UTC)", "ENDS (UTC)"
                );
                for b in scheduled {
                    let g = &b.grant;
                    println!(
                        "{:<36}  {:<10} {:<28} {:<20} {:<20} {}",
                        g.id,
                        format!("{}/{}", g.port, g.protocol),
                        g.source.to_string(),
                        fmt_time(b.opens),
                        fmt_time(g.end),
                        g.requester
                    );
                }
            }
        }
        Response::Status(s) => {
            println!("program id     {}", s.program_id);
            println!("pin dir        {}", s.pin_dir);
            println!("started        {}", fmt_time(s.started));
            for i in &s.interfaces {
                println!(
                    "interface      {} ({} mode, {} program)",
                    i.name, i.mode, i.link
                );
                if let (Some(hook), Some(pos), Some(n)) = (i.hook, i.position, i.programs) {
                    println!(
                        "  hook         {hook}, position {pos} of {n} ({})",
                        if i.ahead.is_empty() {
                            "nothing runs before it"
                        } else {
                            "other programs run before it"
                        }
                    );
                }
                for a in &i.ahead {
                    println!("  ahead        {} (id {}, {})", a.name, a.id, a.hook);
                }
                if let Some(p) = &i.problem {
                    println!("  PROBLEM      {p}");
                }
            }
            println!("protected      {}", s.protected.join(", "));
            println!("active grants  {}", s.active_grants);
            println!("flows          {}", s.flows);
            println!("audit head     seq {} {}", s.audit_seq, s.audit_head);
            if s.enrolled {
                println!(
                    "controller     {}",
                    s.controller.as_deref().unwrap_or("not connected")
                );
                if let Some(t) = s.certificate_expires {
                    println!("certificate    expires {}", fmt_time(t));
                }
                if let Some(p) = &s.certificate_problem {
                    println!("certificate    PROBLEM: {p}");
                }
                if let Some(r) = &s.closed_by_controller {
                    println!("closed         {r}");
                }
            }
            for (k, v) in &s.counters {
                println!("  {k:<22} {v}");
            }
        }
        Response::Verified(v) => println!(
            "audit log verifies: {} records in {} file(s), seq {}..{}, head {}; {} signed checkpoints, covered up to seq {}",
            v.records,
            v.files,
            v.first_seq.unwrap_or(0),
            v.last_seq.unwrap_or(0),
            v.head,
            v.checkpoints,
            v.covered_seq.unwrap_or(0)
        ),
        Response::Detached => {
            println!("detached: enforcement removed from every interface; the agent stopped")
        }
        Response::Audit { .. } | Response::AuditEnd | Response::Error { .. } => {}
    }
    ExitCode::SUCCESS
}
