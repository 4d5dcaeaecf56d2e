//! `jit connect ssh|rdp VM`: Azure's VM "Connect", with duration and justification: request
//! the port from My IP, wait until an agent has applied it, then run ssh or write an .rdp file.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use jitgate_api::{InitiateBody, InitiatePort, InitiateVm, PortStatus, ProtoSel};
use serde::Serialize;

use crate::client::Client;
use crate::cmd::requests::{Wait, print_denial};
use crate::exit::{self, Fail, R};
use crate::input;
use crate::output::{Out, print_json};

#[derive(Subcommand)]
pub enum ConnectCmd {
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
pub struct ConnectArgs {
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

/// `--dry-run`'s output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SshPlan<'a> {
    request_id: &'a str,
    command: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RdpWritten<'a> {
    request_id: &'a str,
    rdp_file: &'a PathBuf,
}

pub async fn run(c: &Client, cmd: &ConnectCmd, out: Out) -> R<()> {
    let (vm, args, default_port) = match cmd {
        ConnectCmd::Ssh { vm, c: args, .. } => (vm, args, 22u16),
        ConnectCmd::Rdp { vm, c: args, .. } => (vm, args, 3389u16),
    };
    let wait = Wait::from_args(&args.timeout, &args.poll)?;
    let d = c.vm(vm).await?;
    // Addresses are the controller's; as typed addresses they can never pass as ssh options.
    let addrs: Vec<IpAddr> = d.addresses.iter().filter_map(|a| a.parse().ok()).collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv6() == args.ipv6)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Fail::new(exit::NOT_FOUND, format!("VM {vm} has no address")))?;
    let duration = match &args.duration {
        Some(x) => x.clone(),
        None => input::ask("duration (e.g. 1h)")?,
    };
    let justification = match &args.justification {
        Some(x) => x.clone(),
        None => input::ask("justification")?,
    };
    let port = args.port.unwrap_or(default_port);
    let body = InitiateBody {
        virtual_machines: vec![InitiateVm {
            id: vm.clone(),
            ports: vec![InitiatePort {
                start_time_utc: None,
                number: u32::from(port),
                protocol: Some(ProtoSel::Tcp.as_str().into()),
                allowed_source_address_prefix: None,
                allowed_source_address_prefixes: None,
                end_time_utc: None,
                duration: Some(input::iso_duration(&duration)?),
                max_connections: None,
            }],
        }],
        justification,
    };
    let r = c.initiate(&body).await?;
    if r.status == PortStatus::Denied {
        print_denial(&r);
        return Err(Fail::new(exit::DENIED, "request denied"));
    }
    wait.applied(c, &r.id, out.json).await?;
    match cmd {
        ConnectCmd::Ssh {
            user,
            dry_run,
            ssh_args,
            remote,
            ..
        } => {
            let mut argv = ssh_command(addr, port, user.as_deref(), ssh_args);
            argv.extend(remote.iter().cloned());
            if *dry_run {
                print_json(&SshPlan {
                    request_id: &r.id,
                    command: &argv,
                });
                return Ok(());
            }
            let status = std::process::Command::new("ssh")
                .args(&argv[1..])
                .status()
                .map_err(|e| Fail::error(format!("running ssh: {e}")))?;
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
            std::fs::write(&path, rdp_file(addr, port))
                .map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
            if out.json {
                print_json(&RdpWritten {
                    request_id: &r.id,
                    rdp_file: &path,
                });
            } else {
                println!(
                    "access applied; open {} with your RDP client",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// `ssh [-p PORT] [-l USER] [ARGS...] ADDRESS`.
fn ssh_command(addr: IpAddr, port: u16, user: Option<&str>, extra: &[String]) -> Vec<String> {
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

fn rdp_file(addr: IpAddr, port: u16) -> String {
    let host = match addr {
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    };
    format!(
        "full address:s:{host}:{port}\r\nprompt for credentials:i:1\r\nadministrative session:i:0\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            ssh_command(v4, 22, Some("bob"), &["-A".into()]),
            vec!["ssh", "-l", "bob", "-A", "192.0.2.1"]
        );
        assert_eq!(
            ssh_command(v6, 2222, None, &[]),
            vec!["ssh", "-p", "2222", "2001:db8::1"]
        );
        assert!(rdp_file(v6, 3389).starts_with("full address:s:[2001:db8::1]:3389\r\n"));
    }
}
