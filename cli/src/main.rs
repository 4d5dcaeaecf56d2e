//! `jit`: the jitgate operator command line.
//!
//! Configuration (later wins): the file `$JIT_CONFIG` (default `~/.config/jit/config.toml`,
//! keys `url`, `ca`, `token`), then the environment (`JIT_URL`, `JIT_CA`, `JIT_TOKEN`), then
//! `--url` / `--ca` flags. Exit codes are stable; see `EXIT CODES` in `jit --help`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use jitgate_common::{Port, Protocol, SourcePrefix};
use serde::Deserialize;
use serde_json::{Value, json};

mod audit;
mod connections;

const EXIT_HELP: &str = "EXIT CODES:
  0  success
  1  error talking to the controller (network, TLS, server error)
  2  usage, configuration or invalid input (HTTP 400)
  3  the access request was denied by policy
  4  authentication failed (missing, wrong, expired or revoked token; HTTP 401)
  5  forbidden: the token lacks the right or scope (HTTP 403)
  6  not found (HTTP 404)
  7  conflict, e.g. nothing left to revoke (HTTP 409), or access was revoked while waiting
  8  timed out waiting for access to be applied
  9  the activity log failed verification";

mod compliance;

mod exit {
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DENIED: u8 = 3;
    pub const UNAUTHENTICATED: u8 = 4;
    pub const FORBIDDEN: u8 = 5;
    pub const NOT_FOUND: u8 = 6;
    pub const CONFLICT: u8 = 7;
    pub const TIMEOUT: u8 = 8;
    pub const VERIFY_FAILED: u8 = 9;
}

/// jit: ask for just-in-time access to a VM's management ports, and manage JIT policies,
/// request history and the activity log of a jitgate controller.
#[derive(Parser)]
#[command(name = "jit", version, after_help = EXIT_HELP)]
struct Cli {
    /// Controller URL, e.g. https://jit.example.net:8443 [env: JIT_URL]
    #[arg(long, global = true)]
    url: Option<String>,
    /// CA certificate (PEM) that signed the controller's certificate [env: JIT_CA]
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Configuration file [env: JIT_CONFIG; default ~/.config/jit/config.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON (for scripts) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show who the configured token belongs to, its role and scope, and "My IP".
    Whoami,
    /// List the VMs you can see: where their JIT policy comes from, and their agent's
    /// status (online, degraded: enforcement detached or partial, offline, none).
    Vms,
    /// The agent fleet: each VM's agent, online/offline, last seen, interfaces, protected
    /// ports, active grants, audit head.
    Agents,
    /// Show, set or delete a JIT policy (a VM's own, or a resource group's).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Request access to ports of a VM (Azure's "initiate").
    Request(RequestArgs),
    /// The VM "Connect" workflow: request access for SSH or RDP, wait until it is applied,
    /// then run ssh or write an .rdp file.
    #[command(subcommand)]
    Connect(ConnectCmd),
    /// Show a VM's request history, newest first.
    History {
        vm: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one request.
    Show { request: String },
    /// Revoke a request's active access (recorded as UserRequested).
    Revoke { request: String },
    /// Query the activity log, or verify its hash chain (`jit audit verify`). With
    /// `--agent --vm VM`: the VM's agents' own audit records, as they delivered them.
    Audit(AuditArgs),
    /// A VM's connection history, newest first: who connected, from where, under which
    /// request (from the records its agent delivers; `--denied` adds refused attempts).
    Connections(connections::ConnectionsArgs),
    /// Which VMs have management ports reachable without JIT: the report (grouped by
    /// resource group or owner, JSON or CSV), evaluations and probes on demand, history,
    /// policy assignments and remediation.
    Compliance(compliance::ComplianceArgs),
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Show a VM's effective policy (or a resource group's policy).
    Show(PolicyTarget),
    /// Set (replace) a policy from flags or a JSON file.
    Set(PolicySet),
    /// Delete a policy (a VM then falls back to its resource group's).
    Delete(PolicyTarget),
}

#[derive(Args)]
struct PolicyTarget {
    /// The VM (omit with --resource-group).
    vm: Option<String>,
    /// Target the resource group's policy instead of a VM's.
    #[arg(long)]
    resource_group: Option<String>,
}

#[derive(Args)]
struct PolicySet {
    #[command(flatten)]
    target: PolicyTarget,
    /// A JSON file {"ports": [...]} in the API's format ("-" for stdin).
    #[arg(long, conflicts_with_all = ["port", "source", "max", "on_expiry"])]
    file: Option<PathBuf>,
    /// Port and protocol: 22, 22/tcp, 3389/udp, 3389/* (repeatable; default protocol tcp).
    #[arg(long)]
    port: Vec<String>,
    /// Allowed source prefixes for these ports (repeatable), IPv4 or IPv6 CIDR, or "*".
    #[arg(long)]
    source: Vec<String>,
    /// Maximum request window: 3h, 90m, PT3H (PT5M..PT24H).
    #[arg(long, default_value = "3h")]
    max: String,
    /// What happens to admitted flows at expiry: keep or cut.
    #[arg(long, default_value = "keep")]
    on_expiry: String,
}

#[derive(Args)]
struct RequestArgs {
    /// The VM.
    vm: String,
    /// Port[/protocol] (repeatable): 22, 22/tcp, 53/udp, 3389/*. Without a protocol the
    /// policy's protocol is used.
    #[arg(long, required = true)]
    port: Vec<String>,
    /// Source prefix (repeatable); default: your address as the controller sees it ("My IP").
    #[arg(long)]
    source: Vec<String>,
    /// How long: 30m, 1h, 2h30m or ISO 8601 (PT1H).
    #[arg(long, conflicts_with = "until", required_unless_present = "until")]
    duration: Option<String>,
    /// Until when: an ISO 8601 time such as 2026-01-31T17:00:00Z.
    #[arg(long)]
    until: Option<String>,
    /// Why you need access (recorded in history and the activity log).
    #[arg(long, short = 'j')]
    justification: String,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Args, Clone)]
struct WaitArgs {
    /// Wait until the agent has applied the access (status Applied).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (30s, 2m, ...).
    #[arg(long, default_value = "2m")]
    timeout: String,
    /// How often to poll while waiting.
    #[arg(long, default_value = "1s")]
    poll: String,
}

#[derive(Subcommand)]
enum ConnectCmd {
    /// Request SSH (22/tcp) from My IP, wait until applied, then run ssh.
    Ssh {
        vm: String,
        #[command(flatten)]
        c: ConnectArgs,
        /// Login name (ssh -l).
        #[arg(long, short = 'l')]
        user: Option<String>,
        /// Print the ssh command as JSON instead of running it.
        #[arg(long)]
        dry_run: bool,
        /// A command to run on the VM instead of an interactive shell.
        #[arg(long = "command", short = 'c')]
        remote: Option<String>,
        /// Extra arguments for ssh, after `--`.
        #[arg(last = true)]
        ssh_args: Vec<String>,
    },
    /// Request RDP (3389/tcp) from My IP, wait until applied, then write an .rdp file.
    Rdp {
        vm: String,
        #[command(flatten)]
        c: ConnectArgs,
        /// Where to write the .rdp file (default: VM.rdp).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct ConnectArgs {
    /// How long (asked for if omitted and stdin is a terminal).
    #[arg(long)]
    duration: Option<String>,
    /// Why (asked for if omitted and stdin is a terminal).
    #[arg(long, short = 'j')]
    justification: Option<String>,
    /// Use the VM's IPv6 address.
    #[arg(short = '6')]
    ipv6: bool,
    /// Override the port (default 22 for ssh, 3389 for rdp).
    #[arg(long)]
    port: Option<u16>,
    /// Give up waiting for access after this long.
    #[arg(long, default_value = "2m")]
    timeout: String,
    #[arg(long, default_value = "1s", hide = true)]
    poll: String,
}

#[derive(Args)]
struct AuditArgs {
    #[command(subcommand)]
    verify: Option<AuditCmd>,
    /// Only this VM.
    #[arg(long)]
    vm: Option<String>,
    /// Only this resource group.
    #[arg(long)]
    resource_group: Option<String>,
    /// Only this caller (token name).
    #[arg(long)]
    caller: Option<String>,
    /// Only this resource type: VirtualMachine, ResourceGroup, Token.
    #[arg(long)]
    resource_type: Option<String>,
    /// From this time (ISO 8601, inclusive).
    #[arg(long)]
    since: Option<String>,
    /// Up to this time (ISO 8601, exclusive).
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Export as CSV.
    #[arg(long, conflicts_with = "jsonl")]
    csv: bool,
    /// Export as JSON lines.
    #[arg(long)]
    jsonl: bool,
    /// The agents' own audit records of `--vm` instead of the controller's activity log.
    #[arg(long, requires = "vm", conflicts_with_all = ["resource_group", "caller", "resource_type", "csv", "jsonl"])]
    agent: bool,
    /// With --agent: only this record kind (grant.applied, connection.admitted, ...).
    #[arg(long, requires = "agent")]
    kind: Option<String>,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the activity log: its hash chain, and every signed checkpoint of the chain head
    /// (a rewrite that recomputed the later hashes no longer matches the checkpoint after it).
    /// With `--agent --vm VM`: the records the VM's agents delivered, and the checkpoints the
    /// agents signed with their enrolment keys. Exit 9 and name the first bad entry or
    /// checkpoint if it fails.
    Verify {
        /// Verify an export file (`jit audit export`) instead, with no controller.
        #[arg(long, value_name = "FILE")]
        offline: Option<PathBuf>,
        /// With --offline: trust only this public key (SPKI PEM; the controller's
        /// keys/grant-signing.pub), not the one the file carries.
        #[arg(long, value_name = "PEM", requires = "offline")]
        key: Option<PathBuf>,
    },
    /// Write the whole activity log with its signed checkpoints and the controller's public
    /// key to FILE, for `jit audit verify --offline FILE` (docs/controller.md).
    Export { file: PathBuf },
    /// Sign the chain head now (admin; the controller also does it periodically).
    Checkpoint,
}

// ---------------------------------------------------------------------------------------------

/// An error with its exit code.
struct Fail {
    code: u8,
    msg: String,
}

impl Fail {
    fn new(code: u8, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
    }
    fn usage(msg: impl Into<String>) -> Fail {
        Fail::new(exit::USAGE, msg)
    }
}

type R<T> = Result<T, Fail>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    ca: Option<PathBuf>,
    token: Option<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

fn load_client(cli: &Cli) -> R<Client> {
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("JIT_CONFIG").map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/jit/config.toml"))
        });
    let mut fc = FileConfig::default();
    if let Some(p) = &path
        && p.exists()
    {
        let text =
            std::fs::read_to_string(p).map_err(|e| Fail::usage(format!("{}: {e}", p.display())))?;
        fc = toml::from_str(&text).map_err(|e| Fail::usage(format!("{}: {e}", p.display())))?;
    }
    let url = cli
        .url
        .clone()
        .or_else(|| std::env::var("JIT_URL").ok())
        .or(fc.url)
        .ok_or_else(|| {
            Fail::usage("no controller URL: set url in the config file, JIT_URL or --url")
        })?;
    let ca = cli
        .ca
        .clone()
        .or_else(|| std::env::var_os("JIT_CA").map(PathBuf::from))
        .or(fc.ca)
        .ok_or_else(|| {
            Fail::usage("no CA certificate: set ca in the config file, JIT_CA or --ca")
        })?;
    let token = std::env::var("JIT_TOKEN")
        .ok()
        .or(fc.token)
        .ok_or_else(|| Fail::usage("no API token: set token in the config file or JIT_TOKEN"))?;
    let pem = std::fs::read(&ca).map_err(|e| Fail::usage(format!("{}: {e}", ca.display())))?;
    let cert = reqwest::Certificate::from_pem(&pem)
        .map_err(|e| Fail::usage(format!("{}: {e}", ca.display())))?;
    let http = reqwest::Client::builder()
        .add_root_certificate(cert)
        .https_only(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Fail::new(exit::ERROR, format!("HTTP client: {e}")))?;
    Ok(Client {
        http,
        base: url.trim_end_matches('/').to_string(),
        token: token.trim().to_string(),
    })
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> R<Value> {
        self.call_within(method, path, body, None).await
    }

    /// `call` with its own time limit instead of the client's 30 s (for long operations
    /// such as a compliance probe).
    async fn call_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        limit: Option<Duration>,
    ) -> R<Value> {
        let mut rb = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(l) = limit {
            rb = rb.timeout(l);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb
            .send()
            .await
            .map_err(|e| Fail::new(exit::ERROR, format!("cannot reach {}: {e}", self.base)))?;
        let status = r.status();
        let text = r
            .text()
            .await
            .map_err(|e| Fail::new(exit::ERROR, format!("reading the response: {e}")))?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(v);
        }
        let code = v["error"]["code"].as_str().unwrap_or("Error");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        let exit = match status.as_u16() {
            400 | 413 | 415 => exit::USAGE,
            401 => exit::UNAUTHENTICATED,
            403 => exit::FORBIDDEN,
            404 => exit::NOT_FOUND,
            409 => exit::CONFLICT,
            _ => exit::ERROR,
        };
        Err(Fail::new(exit, format!("{code}: {msg}")))
    }
    async fn get(&self, path: &str) -> R<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn get_text(&self, path: &str) -> R<String> {
        let r = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Fail::new(exit::ERROR, format!("cannot reach {}: {e}", self.base)))?;
        if !r.status().is_success() {
            return self.get(path).await.map(|_| String::new());
        }
        r.text()
            .await
            .map_err(|e| Fail::new(exit::ERROR, format!("reading the response: {e}")))
    }
}

/// `30m`, `1h`, `2h30m`, `1d`, `45s` or ISO 8601 `PT1H` → seconds.
fn parse_human_duration(s: &str) -> R<u64> {
    let bad = || {
        Fail::usage(format!(
            "{s:?} is not a duration such as 30m, 1h, 2h30m or PT1H"
        ))
    };
    let t = s.trim();
    if let Some(rest) = t.strip_prefix('P') {
        return iso_to_secs(rest).ok_or_else(bad);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let mult = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(n.checked_mul(mult).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        any = true;
    }
    if !num.is_empty() || !any || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

fn iso_to_secs(rest: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut in_time = false;
    let mut any = false;
    for c in rest.chars() {
        match c {
            '0'..='9' => num.push(c),
            'T' if !in_time && num.is_empty() => in_time = true,
            _ => {
                let n: u64 = num.parse().ok()?;
                num.clear();
                let m = match (in_time, c) {
                    (false, 'D') => 86400,
                    (true, 'H') => 3600,
                    (true, 'M') => 60,
                    (true, 'S') => 1,
                    _ => return None,
                };
                total = total.checked_add(n.checked_mul(m)?)?;
                any = true;
            }
        }
    }
    (num.is_empty() && any && total > 0).then_some(total)
}

fn iso_duration(secs: u64) -> String {
    let (d, rem) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let mut out = String::from("P");
    if d > 0 {
        out.push_str(&format!("{d}D"));
    }
    if h + m + s > 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if s > 0 {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

/// `22`, `22/tcp`, `53/udp`, `3389/*` → (port, protocol or None).
fn parse_port_spec(s: &str) -> R<(u16, Option<&'static str>)> {
    let (p, proto) = match s.split_once('/') {
        Some((p, pr)) => (p, Some(pr)),
        None => (s, None),
    };
    let port: Port = p
        .parse()
        .map_err(|e| Fail::usage(format!("port {p:?}: {e}")))?;
    let proto = match proto {
        None => None,
        Some("*") => Some("*"),
        Some(pr) => Some(
            match pr
                .parse::<Protocol>()
                .map_err(|e| Fail::usage(format!("protocol {pr:?}: {e} (or *)")))?
            {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
            },
        ),
    };
    Ok((port.get(), proto))
}

fn check_prefix(s: &str) -> R<()> {
    if s == "*" {
        return Ok(());
    }
    s.parse::<SourcePrefix>()
        .map(|_| ())
        .map_err(|e| Fail::usage(format!("source {s:?}: {e}")))
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn port_prefixes(p: &Value) -> String {
    if let Some(x) = p["allowedSourceAddressPrefix"].as_str() {
        return x.to_string();
    }
    p["allowedSourceAddressPrefixes"]
        .as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| "-".into())
}

fn print_request_table(reqs: &[Value]) {
    println!(
        "{:<36}  {:<24}  {:<12}  {:<10}  {:<8}  {:<10}  {:<22}  {:<24}  {:<22}  JUSTIFICATION",
        "REQUEST",
        "START (UTC)",
        "REQUESTOR",
        "VM",
        "PORT",
        "STATUS",
        "REASON",
        "SOURCE",
        "END (UTC)"
    );
    for r in reqs {
        for vm in r["virtualMachines"].as_array().into_iter().flatten() {
            for p in vm["ports"].as_array().into_iter().flatten() {
                println!(
                    "{:<36}  {:<24}  {:<12}  {:<10}  {:<8}  {:<10}  {:<22}  {:<24}  {:<22}  {}",
                    s(&r["id"]),
                    s(&r["startTimeUtc"]),
                    s(&r["requestor"]),
                    s(&vm["id"]),
                    format!("{}/{}", s(&p["number"]), s(&p["protocol"])),
                    s(&p["status"]),
                    s(&p["statusReason"]),
                    port_prefixes(p),
                    s(&p["endTimeUtc"]),
                    s(&r["justification"]),
                );
            }
        }
    }
}

fn print_denial(v: &Value) {
    eprintln!("request {} was DENIED:", s(&v["id"]));
    for d in v["denialReasons"].as_array().into_iter().flatten() {
        eprintln!(
            "  {} port {}/{}: {} - {}",
            s(&d["virtualMachine"]),
            s(&d["number"]),
            s(&d["protocol"]),
            s(&d["reason"]),
            s(&d["message"])
        );
    }
}

/// Polls a request until it is Applied (Ok), Denied/Revoked (Err), or the timeout passes.
async fn wait_applied(c: &Client, id: &str, timeout: &str, poll: &str, quiet: bool) -> R<Value> {
    let timeout = Duration::from_secs(parse_human_duration(timeout)?);
    let poll = Duration::from_secs(parse_human_duration(poll)?.max(1));
    let start = Instant::now();
    if !quiet {
        eprintln!("waiting for the agent to apply request {id} ...");
    }
    loop {
        let v = c.get(&format!("/requests/{id}")).await?;
        match v["status"].as_str().unwrap_or("") {
            "Applied" => return Ok(v),
            "Denied" => return Err(Fail::new(exit::DENIED, format!("request {id} was denied"))),
            "Revoked" => {
                return Err(Fail::new(
                    exit::CONFLICT,
                    format!("request {id} was revoked before it was applied"),
                ));
            }
            _ => {}
        }
        if start.elapsed() >= timeout {
            return Err(Fail::new(
                exit::TIMEOUT,
                format!(
                    "timed out after {}s waiting for request {id} to be applied (status {}); it stays requested",
                    timeout.as_secs(),
                    s(&v["status"])
                ),
            ));
        }
        tokio::time::sleep(
            poll.min(timeout.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(100)),
        )
        .await;
    }
}

fn ask(prompt: &str) -> R<String> {
    if !std::io::stdin().is_terminal() {
        return Err(Fail::usage(format!(
            "{prompt} is required (give it as a flag; stdin is not a terminal)"
        )));
    }
    eprint!("{prompt}: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Fail::usage(format!("reading {prompt}: {e}")))?;
    let line = line.trim().to_string();
    if line.is_empty() {
        return Err(Fail::usage(format!("{prompt} is required")));
    }
    Ok(line)
}

fn policy_path(t: &PolicyTarget) -> R<String> {
    match (&t.vm, &t.resource_group) {
        (Some(vm), None) => Ok(format!(
            "/virtualMachines/{vm}/jitNetworkAccessPolicies/default"
        )),
        (None, Some(rg)) => Ok(format!(
            "/resourceGroups/{rg}/jitNetworkAccessPolicies/default"
        )),
        _ => Err(Fail::usage(
            "name a VM or --resource-group RG (one of them)",
        )),
    }
}

fn print_policy(v: &Value) {
    println!(
        "{} policy of {} (updated {} by {})",
        s(&v["scope"]),
        s(&v["name"]),
        s(&v["updatedTimeUtc"]),
        s(&v["updatedBy"])
    );
    println!(
        "{:<8} {:<8} {:<10} {:<8} SOURCES",
        "PORT", "PROTO", "MAX", "EXPIRY"
    );
    for p in v["ports"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<8} {:<10} {:<8} {}",
            s(&p["number"]),
            s(&p["protocol"]),
            s(&p["maxRequestAccessDuration"]),
            s(&p["onExpiry"]),
            port_prefixes(p)
        );
    }
}

async fn run(cli: Cli) -> R<()> {
    // Offline verification needs no controller (and no configuration).
    if let Cmd::Audit(AuditArgs {
        verify: Some(AuditCmd::Verify {
            offline: Some(file),
            key,
        }),
        ..
    }) = &cli.cmd
    {
        return audit::verify_offline(file, key.as_deref(), cli.json);
    }
    let c = load_client(&cli)?;
    let json = cli.json;
    match &cli.cmd {
        Cmd::Whoami => {
            let v = c.get("/me").await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{} ({} on {}), token {}, address {}",
                    s(&v["name"]),
                    s(&v["role"]),
                    s(&v["scope"]),
                    s(&v["tokenId"]),
                    s(&v["callerAddress"])
                );
            }
        }
        Cmd::Vms => {
            let v = c.get("/virtualMachines").await?;
            if json {
                print_json(&v["value"]);
            } else {
                println!(
                    "{:<24} {:<20} {:<16} {:<9} ADDRESSES",
                    "NAME", "RESOURCE GROUP", "POLICY", "AGENT"
                );
                for x in v["value"].as_array().into_iter().flatten() {
                    let addrs: Vec<String> = x["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    println!(
                        "{:<24} {:<20} {:<16} {:<9} {}",
                        s(&x["name"]),
                        s(&x["resourceGroup"]),
                        s(&x["policySource"]),
                        s(&x["status"]),
                        addrs.join(" ")
                    );
                    for p in x["problems"].as_array().into_iter().flatten() {
                        println!("    {}", s(p));
                    }
                }
            }
        }
        Cmd::Agents => {
            let v = c.get("/agents").await?;
            if json {
                print_json(&v["value"]);
            } else {
                println!(
                    "{:<16} {:<36} {:<8} {:<25} {:<20} {:<24} {:>6} AUDIT",
                    "VM", "AGENT", "STATE", "LAST SEEN", "INTERFACES", "PROTECTED", "GRANTS"
                );
                let list = |x: &Value| {
                    let v: Vec<String> = x.as_array().into_iter().flatten().map(s).collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(",")
                    }
                };
                for x in v["value"].as_array().into_iter().flatten() {
                    let head = s(&x["auditHead"]);
                    println!(
                        "{:<16} {:<36} {:<8} {:<25} {:<20} {:<24} {:>6} {} {}",
                        s(&x["virtualMachine"]),
                        s(&x["agentId"]),
                        s(&x["connection"]),
                        s(&x["lastSeenTimeUtc"]),
                        list(&x["interfaces"]),
                        list(&x["protectedPorts"]),
                        s(&x["activeGrants"]),
                        s(&x["auditSeq"]),
                        head.get(..12).unwrap_or(&head)
                    );
                }
            }
        }
        Cmd::Policy(PolicyCmd::Show(t)) => {
            let v = match (&t.vm, &t.resource_group) {
                (Some(vm), None) => {
                    let d = c.get(&format!("/virtualMachines/{vm}")).await?;
                    if d["effectivePolicy"].is_null() {
                        return Err(Fail::new(
                            exit::NOT_FOUND,
                            format!("VM {vm} has no JIT policy (neither its own nor its group's)"),
                        ));
                    }
                    d["effectivePolicy"].clone()
                }
                _ => c.get(&policy_path(t)?).await?,
            };
            if json {
                print_json(&v);
            } else {
                print_policy(&v);
            }
        }
        Cmd::Policy(PolicyCmd::Set(ps)) => {
            let path = policy_path(&ps.target)?;
            let body: Value = if let Some(f) = &ps.file {
                let text = if f.as_os_str() == "-" {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                        .map_err(|e| Fail::usage(format!("stdin: {e}")))?;
                    s
                } else {
                    std::fs::read_to_string(f)
                        .map_err(|e| Fail::usage(format!("{}: {e}", f.display())))?
                };
                serde_json::from_str(&text)
                    .map_err(|e| Fail::usage(format!("{}: {e}", f.display())))?
            } else {
                if ps.port.is_empty() || ps.source.is_empty() {
                    return Err(Fail::usage(
                        "give --port and --source (repeatable), or --file policy.json",
                    ));
                }
                for src in &ps.source {
                    check_prefix(src)?;
                }
                let max = iso_duration(parse_human_duration(&ps.max)?);
                let mut ports = Vec::new();
                for p in &ps.port {
                    let (n, proto) = parse_port_spec(p)?;
                    ports.push(json!({
                        "number": n,
                        "protocol": proto.unwrap_or("TCP"),
                        "allowedSourceAddressPrefixes": ps.source,
                        "maxRequestAccessDuration": max,
                        "onExpiry": ps.on_expiry,
                    }));
                }
                json!({ "ports": ports })
            };
            let v = c.call(reqwest::Method::PUT, &path, Some(&body)).await?;
            if json {
                print_json(&v);
            } else {
                print_policy(&v);
            }
        }
        Cmd::Policy(PolicyCmd::Delete(t)) => {
            c.call(reqwest::Method::DELETE, &policy_path(t)?, None)
                .await?;
            if json {
                print_json(&json!({"deleted": true}));
            } else {
                println!("deleted");
            }
        }
        Cmd::Request(a) => {
            let mut ports = Vec::new();
            for src in &a.source {
                check_prefix(src)?;
            }
            let window = match (&a.duration, &a.until) {
                (Some(d), None) => json!({"duration": iso_duration(parse_human_duration(d)?)}),
                (None, Some(u)) => json!({"endTimeUtc": u}),
                _ => return Err(Fail::usage("give --duration or --until")),
            };
            for p in &a.port {
                let (n, proto) = parse_port_spec(p)?;
                let mut o = json!({"number": n});
                if let Some(pr) = proto {
                    o["protocol"] = json!(pr);
                }
                if !a.source.is_empty() {
                    o["allowedSourceAddressPrefixes"] = json!(a.source);
                }
                for (k, v) in window.as_object().into_iter().flatten() {
                    o[k] = v.clone();
                }
                ports.push(o);
            }
            let body = json!({"virtualMachines": [{"id": a.vm, "ports": ports}],
                "justification": a.justification});
            let v = c
                .call(
                    reqwest::Method::POST,
                    "/jitNetworkAccessPolicies/default/initiate",
                    Some(&body),
                )
                .await?;
            let id = s(&v["id"]);
            if v["status"] == "Denied" {
                if json {
                    print_json(&v);
                } else {
                    print_denial(&v);
                }
                return Err(Fail::new(exit::DENIED, format!("request {id} denied")));
            }
            let v = if a.wait.wait {
                wait_applied(&c, &id, &a.wait.timeout, &a.wait.poll, json).await?
            } else {
                v
            };
            if json {
                print_json(&v);
            } else {
                print_request_table(std::slice::from_ref(&v));
            }
        }
        Cmd::Connect(cc) => {
            let (vm, args, default_port) = match cc {
                ConnectCmd::Ssh { vm, c, .. } => (vm, c, 22u16),
                ConnectCmd::Rdp { vm, c, .. } => (vm, c, 3389u16),
            };
            let d = c.get(&format!("/virtualMachines/{vm}")).await?;
            let addrs: Vec<String> = d["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            let addr = addrs
                .iter()
                .find(|a| a.contains(':') == args.ipv6)
                .or(addrs.first())
                .cloned()
                .ok_or_else(|| Fail::new(exit::NOT_FOUND, format!("VM {vm} has no address")))?;
            let duration = match &args.duration {
                Some(x) => x.clone(),
                None => ask("duration (e.g. 1h)")?,
            };
            let justification = match &args.justification {
                Some(x) => x.clone(),
                None => ask("justification")?,
            };
            let port = args.port.unwrap_or(default_port);
            let body = json!({"virtualMachines": [{"id": vm, "ports": [
                {"number": port, "protocol": "TCP", "duration": iso_duration(parse_human_duration(&duration)?)}]}],
                "justification": justification});
            let v = c
                .call(
                    reqwest::Method::POST,
                    "/jitNetworkAccessPolicies/default/initiate",
                    Some(&body),
                )
                .await?;
            if v["status"] == "Denied" {
                print_denial(&v);
                return Err(Fail::new(exit::DENIED, "request denied"));
            }
            let id = s(&v["id"]);
            wait_applied(&c, &id, &args.timeout, &args.poll, json).await?;
            match cc {
                ConnectCmd::Ssh {
                    user,
                    dry_run,
                    ssh_args,
                    remote,
                    ..
                } => {
                    let mut cmd = ssh_command(&addr, port, user.as_deref(), ssh_args);
                    cmd.extend(remote.iter().cloned());
                    if *dry_run {
                        print_json(&json!({"requestId": id, "command": cmd}));
                        return Ok(());
                    }
                    let status = std::process::Command::new(&cmd[0])
                        .args(&cmd[1..])
                        .status()
                        .map_err(|e| Fail::new(exit::ERROR, format!("running ssh: {e}")))?;
                    if !status.success() {
                        return Err(Fail::new(
                            u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
                            "ssh exited with an error",
                        ));
                    }
                }
                ConnectCmd::Rdp { output, .. } => {
                    let path = output
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(format!("{vm}.rdp")));
                    std::fs::write(&path, rdp_file(&addr, port))
                        .map_err(|e| Fail::new(exit::ERROR, format!("{}: {e}", path.display())))?;
                    if json {
                        print_json(&json!({"requestId": id, "rdpFile": path}));
                    } else {
                        println!(
                            "access applied; open {} with your RDP client",
                            path.display()
                        );
                    }
                }
            }
        }
        Cmd::Connections(a) => connections::connections(&c, a, json).await?,
        Cmd::History { vm, limit } => {
            let v = c
                .get(&format!("/virtualMachines/{vm}/requests?limit={limit}"))
                .await?;
            if json {
                print_json(&v["value"]);
            } else {
                print_request_table(v["value"].as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        Cmd::Show { request } => {
            let v = c.get(&format!("/requests/{request}")).await?;
            if json {
                print_json(&v);
            } else {
                print_request_table(std::slice::from_ref(&v));
                if v["status"] == "Denied" {
                    print_denial(&v);
                }
            }
        }
        Cmd::Revoke { request } => {
            let v = c
                .call(
                    reqwest::Method::POST,
                    &format!("/requests/{request}/revoke"),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                print_request_table(std::slice::from_ref(&v));
            }
        }
        Cmd::Compliance(a) => compliance::run(&c, a, json).await?,
        Cmd::Audit(a) => {
            match &a.verify {
                Some(AuditCmd::Verify { .. }) if a.agent => {
                    let vm = a.vm.as_deref().unwrap_or_default();
                    return audit::agent_verify(&c, vm, json).await;
                }
                Some(AuditCmd::Verify { .. }) => {
                    let v = c.get("/activityLog/verify").await?;
                    return audit::report(&v, json, "activity log");
                }
                Some(AuditCmd::Export { file }) => return audit::export(&c, file, json).await,
                Some(AuditCmd::Checkpoint) => return audit::checkpoint(&c, json).await,
                None => {}
            }
            if a.agent {
                return connections::agent_audit(&c, a, json).await;
            }
            let mut q = connections::query(
                a.limit,
                &[
                    ("vm", &a.vm),
                    ("resourceGroup", &a.resource_group),
                    ("caller", &a.caller),
                    ("resourceType", &a.resource_type),
                    ("from", &a.since),
                    ("to", &a.until),
                ],
            );
            if a.csv || a.jsonl {
                q.push_str(&format!("&format={}", if a.csv { "csv" } else { "jsonl" }));
                let text = c.get_text(&format!("/activityLog?{q}")).await?;
                print!("{text}");
                return Ok(());
            }
            let v = c.get(&format!("/activityLog?{q}")).await?;
            if json {
                print_json(&v["value"]);
            } else {
                println!(
                    "{:<6} {:<24} {:<34} {:<10} {:<10} {:<14} {:<16} OUTCOME",
                    "SEQ", "TIME (UTC)", "OPERATION", "GROUP", "VM", "CALLER", "ADDRESS"
                );
                for e in v["value"].as_array().into_iter().flatten() {
                    println!(
                        "{:<6} {:<24} {:<34} {:<10} {:<10} {:<14} {:<16} {}",
                        s(&e["seq"]),
                        s(&e["timeUtc"]),
                        s(&e["operation"]),
                        s(&e["resourceGroup"]),
                        s(&e["virtualMachine"]),
                        s(&e["caller"]),
                        s(&e["callerAddress"]),
                        s(&e["outcome"])
                    );
                }
            }
        }
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `ssh [-p PORT] [-l USER] [ARGS...] ADDRESS`.
fn ssh_command(addr: &str, port: u16, user: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut cmd = vec!["ssh".to_string()];
    if port != 22 {
        cmd.push("-p".into());
        cmd.push(port.to_string());
    }
    if let Some(u) = user {
        cmd.push("-l".into());
        cmd.push(u.into());
    }
    cmd.extend(extra.iter().cloned());
    cmd.push(addr.to_string());
    cmd
}

fn rdp_file(addr: &str, port: u16) -> String {
    let host = if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    };
    format!(
        "full address:s:{host}:{port}\r\nprompt for credentials:i:1\r\nadministrative session:i:0\r\n"
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("jit: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, v) in [
            ("30m", 1800),
            ("1h", 3600),
            ("2h30m", 9000),
            ("PT1H", 3600),
            ("1d", 86400),
        ] {
            assert_eq!(parse_human_duration(s).ok(), Some(v), "{s}");
        }
        for s in ["", "1", "h", "1x", "PT", "0m", "-1h"] {
            assert!(parse_human_duration(s).is_err(), "{s}");
        }
        assert_eq!(iso_duration(9000), "PT2H30M");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port_spec("22").ok(), Some((22, None)));
        assert_eq!(parse_port_spec("22/tcp").ok(), Some((22, Some("TCP"))));
        assert_eq!(parse_port_spec("3389/*").ok(), Some((3389, Some("*"))));
        assert!(parse_port_spec("0").is_err());
        assert!(parse_port_spec("22/icmp").is_err());
    }

    #[test]
    fn commands() {
        assert_eq!(
            ssh_command("192.0.2.1", 22, Some("bob"), &["-A".into()]),
            vec!["ssh", "-l", "bob", "-A", "192.0.2.1"]
        );
        assert_eq!(
            ssh_command("2001:db8::1", 2222, None, &[]),
            vec!["ssh", "-p", "2222", "2001:db8::1"]
        );
        assert!(rdp_file("2001:db8::1", 3389).starts_with("full address:s:[2001:db8::1]:3389\r\n"));
    }
}
