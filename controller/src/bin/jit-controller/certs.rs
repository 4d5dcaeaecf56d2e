//! `jit-controller certs`: the server certificate renewed from the CA without a restart
//! (docs/operations.md, "Rotation").

use anyhow::Result;
use clap::Subcommand;
use jitgate_controller::state::StateDir;

/// The `certs` subcommands (the overview is on `Cmd::Certs`).
#[derive(Subcommand)]
pub enum CertsCmd {
    /// Issue a new server certificate (new key) from the CA for the names of the current one
    /// (and --name), and install it (server.key, then server.crt, each replaced atomically).
    /// A running controller serves it to new connections within server_reload_seconds, or at
    /// once on SIGHUP (systemctl reload jit-controller); established connections keep theirs.
    RenewServer {
        /// Another DNS name or address for the certificate (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Validity in days (1 to 825).
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

pub fn run(dir: &StateDir, cmd: CertsCmd, json: bool) -> Result<()> {
    match cmd {
        CertsCmd::RenewServer { names, days } => {
            let r = jitgate_controller::state::renew_server_cert(dir, &names, days)?;
            if json {
                println!("{}", serde_json::json!(r));
            } else {
                println!(
                    "server certificate renewed for {} (expires unix {}); a running controller serves it within server_reload_seconds, or at once on SIGHUP",
                    r.names.join(", "),
                    r.not_after_unix
                );
            }
        }
    }
    Ok(())
}
