//! `jit-controller rg` and `vm`: resource groups and VMs registered, VMs' agent enrolment
//! tokens issued and agent credentials revoked.

use std::net::IpAddr;

use anyhow::Result;
use clap::Subcommand;
use jitgate_api::terminal::safe;
use jitgate_controller::app::App;
use jitgate_controller::authz::Caller;
use jitgate_controller::state::StateDir;

#[derive(Subcommand)]
pub enum RgCmd {
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
pub enum VmCmd {
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

pub async fn run_rg(dir: &StateDir, cmd: RgCmd, json: bool) -> Result<()> {
    crate::with_app(dir, async |app| run_rg_on(app, cmd, json).await).await
}

async fn run_rg_on(app: &App, cmd: RgCmd, json: bool) -> Result<()> {
    let local = Caller::local();
    match cmd {
        RgCmd::Add { name, owner } => {
            app.inventory.add_group(&local, &name, &owner).await?;
            if !json {
                println!(
                    "added resource group {} (owner {})",
                    safe(&name),
                    safe(&owner)
                );
            }
        }
        RgCmd::List => {
            let v = app.inventory.groups(&local).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<24} OWNER", "NAME");
                for g in v {
                    println!("{:<24} {}", safe(&g.name), safe(&g.owner));
                }
            }
        }
    }
    Ok(())
}

pub async fn run_vm(dir: &StateDir, cmd: VmCmd, json: bool) -> Result<()> {
    crate::with_app(dir, async |app| run_vm_on(app, cmd, json).await).await
}

async fn run_vm_on(app: &App, cmd: VmCmd, json: bool) -> Result<()> {
    let local = Caller::local();
    match cmd {
        VmCmd::Add {
            name,
            resource_group,
            addresses,
        } => {
            app.inventory
                .add_vm(&local, &name, &resource_group, &addresses)
                .await?;
            let (token, expires) = app.fleet.create_enroll_token(&local, &name).await?;
            print_enroll(&name, &token, expires, json, true);
        }
        VmCmd::EnrollToken { name } => {
            let (token, expires) = app.fleet.create_enroll_token(&local, &name).await?;
            print_enroll(&name, &token, expires, json, false);
        }
        VmCmd::RevokeAgent { name } => {
            let ids = app.fleet.revoke_agents(&local, &name).await?;
            if json {
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
            if json {
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
