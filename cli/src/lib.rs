//! `jit`, the jitgate operator command line, as a library: [`command`] is its clap
//! definition (from which `jit-gen` writes the man pages and shell completions), [`main`]
//! runs it.
//!
//! Module map: `cmd::*` one module per command group (arguments, calls, views); `client`
//! the typed API calls; `config` where the controller is and the token; `input` what an
//! operator types (durations, ports, sources, prompts); `output` JSON pass-through and
//! exports; `table` the one table printer; `text` terminal-safe text; `exit` exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod client;
mod cmd;
mod config;
mod exit;
mod input;
mod output;
mod table;
/// Terminal-safe text, shared with `jit-controller`'s own tables.
use jitgate_api::terminal as text;

use client::Client;
use cmd::{
    apply, approvals, audit, compliance, connect, connections, history, keys, login, logout,
    notify, policy, requests, vm, vms, whoami,
};
use exit::R;
use output::Out;

/// jit: ask for just-in-time access to a VM's management ports, and manage JIT policies,
/// request history and the activity log of a jitgate controller.
#[derive(Parser)]
#[command(name = "jit", version, after_help = exit::HELP)]
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
    /// Sign in with your organisation's identity provider (the browser, or `--device` for
    /// a code entered elsewhere); the session is kept for the next commands.
    Login(login::LoginArgs),
    /// End your session and forget it.
    Logout,
    /// Who you are to the controller: the person (or token), your groups, the roles and
    /// scopes they give, when your session ends, and "My IP".
    Whoami,
    /// List the VMs you can see: where their JIT policy comes from, and their agent's
    /// status (online, degraded: enforcement detached or partial, offline, none).
    Vms,
    /// One VM: its policy, its agent (state, last heard, protocol level) and where
    /// jitgate's program runs on each interface (hook, position, the programs ahead).
    #[command(subcommand)]
    Vm(vm::VmCmd),
    /// The agent fleet: each VM's agent, online/offline, last seen, interfaces, protected
    /// ports, active grants, audit head.
    Agents,
    /// Show, set or delete a JIT policy (a VM's own, or a resource group's).
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Request access to ports of a VM (Azure's "initiate").
    Request(requests::RequestArgs),
    /// The VM "Connect" workflow: request access for SSH or RDP, wait until it is applied,
    /// then run ssh or write an .rdp file.
    #[command(subcommand)]
    Connect(connect::ConnectCmd),
    /// Show a VM's request history, newest first.
    History(history::HistoryArgs),
    /// Show one request.
    Show { request: String },
    /// Revoke a request's active access (recorded as UserRequested); a request still
    /// pending approval is cancelled instead.
    Revoke { request: String },
    /// The requests waiting for your approval, with what each still needs; or, with
    /// `--history`, the approvals report (every decision; table, --json or --csv).
    Approvals(approvals::ApprovalsArgs),
    /// Approve a request pending approval (counts once toward its rule's current stage), or
    /// record an admin's `--emergency` approval.
    Approve(approvals::ApproveArgs),
    /// Deny a request pending approval (ends it: Denied / Rejected, with your reason).
    Deny(approvals::DenyArgs),
    /// Withdraw your own request while it is pending approval (Denied / Cancelled).
    Cancel { request: String },
    /// Query the activity log, or verify its hash chain (`jit audit verify`). With
    /// `--agent --vm VM`: the VM's agents' own audit records, as they delivered them.
    Audit(audit::AuditArgs),
    /// A VM's connection history, newest first: who connected, from where, under which
    /// request (from the records its agent delivers; `--denied` adds refused attempts).
    Connections(connections::ConnectionsArgs),
    /// Which VMs have management ports reachable without JIT: the report (grouped by
    /// resource group or owner, JSON or CSV), evaluations and probes on demand, history,
    /// policy assignments and remediation.
    Compliance(compliance::ComplianceArgs),
    /// Where the controller sends notifications (webhook, Slack, Teams, email): add, list,
    /// remove and test sinks, see their queues, re-drive dead deliveries, write the secrets
    /// that sign webhook bodies. Admins only; a sink's scope lies within yours.
    #[command(subcommand)]
    Notify(notify::NotifyCmd),
    /// Policies as code: declare resource groups, VMs, JIT policies, compliance assignments
    /// and notification sinks in a TOML file; print the plan (create / change / delete, field
    /// by field) and apply it in one transaction. Deletes only with --prune.
    Apply(apply::ApplyArgs),
    /// Write the state you can see as a declaration file (`jit apply -f` reads it back).
    Export,
    /// The grant-signing keys (admins on `*`): states and times, and during a rotation the
    /// active agents that have not acknowledged the announced key and when the leader
    /// switches anyway. Rotating is `jit-controller keys rotate` on a controller host.
    Keys,
}

/// The command-line definition, for generating man pages and shell completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs `jit` with the process's arguments; the exit code is one of `EXIT CODES`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jit: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("jit: {}", text::safe(&f.msg));
            ExitCode::from(f.code)
        }
    }
}

/// Dispatches to the command's module.
async fn run(cli: Cli) -> R<()> {
    let out = Out { json: cli.json };
    // Offline verification needs no controller (and no configuration).
    if let Cmd::Audit(a) = &cli.cmd
        && let Some((file, key)) = a.offline()
    {
        return audit::verify_offline(file, key, out);
    }
    // A declaration file is read first: its mistakes need no controller.
    let apply_body = match &cli.cmd {
        Cmd::Apply(a) => Some(a.body()?),
        _ => None,
    };
    let settings = config::load(&config::Flags {
        url: cli.url.as_deref(),
        ca: cli.ca.as_deref(),
        config: cli.config.as_deref(),
    })?;
    let c = Client::new(&settings)?;
    match &cli.cmd {
        Cmd::Login(a) => return login::run(&c, &settings, a, out).await,
        Cmd::Logout => return logout::run(&c, &settings).await,
        _ if !c.has_credential() => {
            return Err(exit::Fail::new(
                exit::UNAUTHENTICATED,
                "not signed in: run `jit login` (people), or set an API token in JIT_TOKEN or the \
                 config file's `token` (automation)",
            ));
        }
        _ => {}
    }
    match &cli.cmd {
        Cmd::Login(_) | Cmd::Logout => Ok(()),
        Cmd::Whoami => whoami::run(&c, out).await,
        Cmd::Vms => vms::vms(&c, out).await,
        Cmd::Vm(v) => vm::run(&c, v, out).await,
        Cmd::Agents => vms::agents(&c, out).await,
        Cmd::Policy(p) => policy::run(&c, p, out).await,
        Cmd::Request(a) => requests::request(&c, a, out).await,
        Cmd::Connect(a) => connect::run(&c, a, out).await,
        Cmd::History(a) => history::run(&c, a, out).await,
        Cmd::Show { request } => requests::show(&c, request, out).await,
        Cmd::Revoke { request } => requests::revoke(&c, request, out).await,
        Cmd::Approvals(a) => approvals::list(&c, a, out).await,
        Cmd::Approve(a) => approvals::approve(&c, a, out).await,
        Cmd::Deny(a) => approvals::deny(&c, a, out).await,
        Cmd::Cancel { request } => approvals::cancel(&c, request, out).await,
        Cmd::Audit(a) => audit::run(&c, a, out).await,
        Cmd::Connections(a) => connections::run(&c, a, out).await,
        Cmd::Compliance(a) => compliance::run(&c, a, out).await,
        Cmd::Notify(n) => notify::run(&c, n, out).await,
        Cmd::Apply(_) => match apply_body {
            Some(b) => apply::apply(&c, b, out).await,
            None => Ok(()),
        },
        Cmd::Export => apply::export(&c, out).await,
        Cmd::Keys => keys::run(&c, out).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_is_consistent() {
        super::command().debug_assert();
    }
}
