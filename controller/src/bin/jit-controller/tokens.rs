//! `jit-controller token`: API tokens made, listed and revoked on the host (as the local
//! administrator; each in the activity log).

use anyhow::{Result, bail};
use clap::Subcommand;
use jitgate_api::terminal::safe;
use jitgate_controller::app::App;
use jitgate_controller::authz::Caller;
use jitgate_controller::input;
use jitgate_controller::state::StateDir;
use jitgate_controller::tokens::TokenInfo;

#[derive(Subcommand)]
pub enum TokenCmd {
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

pub async fn run(dir: &StateDir, cmd: TokenCmd, json: bool) -> Result<()> {
    crate::with_app(dir, async |app| run_on(app, cmd, json).await).await
}

async fn run_on(app: &App, cmd: TokenCmd, json: bool) -> Result<()> {
    let local = Caller::local();
    match cmd {
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
            if json {
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
        TokenCmd::List => print_tokens(&app.tokens.list(&local).await?, json)?,
        TokenCmd::Revoke { id } => {
            app.tokens.revoke(&local, &id).await?;
            if !json {
                println!("revoked {id}");
            }
        }
    }
    Ok(())
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
