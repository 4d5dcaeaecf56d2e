//! `jit whoami`: who the controller takes you for: the person (or token), the groups (or
//! why they are unknown), the roles and scopes they map to, the session's end, and "My IP".

use jitgate_api::{CallerKind, Whoami};

use crate::client::Client;
use crate::exit::R;
use crate::output::Out;
use crate::text::safe;

pub async fn run(c: &Client, out: Out) -> R<()> {
    let w = c.whoami().await?;
    out.show(&w, print)
}

pub fn print(w: &Whoami) {
    let grants: Vec<String> = w
        .grants
        .iter()
        .map(|g| format!("{} on {}", g.role, g.scope))
        .collect();
    let roles = if grants.is_empty() {
        "no role".to_string()
    } else {
        grants.join(", ")
    };
    println!("{} ({})", safe(&w.display_name), safe(&roles));
    println!("  principal: {}", safe(&w.principal));
    if let Some(e) = &w.email {
        println!("  email:     {}", safe(e));
    }
    if w.kind == CallerKind::Session {
        if w.groups.known {
            let g = if w.groups.groups.is_empty() {
                "none".to_string()
            } else {
                w.groups.groups.join(", ")
            };
            println!("  groups:    {}", safe(&g));
        } else {
            println!(
                "  groups:    unknown: {}",
                safe(w.groups.unknown_reason.as_deref().unwrap_or("not said"))
            );
        }
        for g in &w.grants {
            if !g.via_groups.is_empty() {
                println!(
                    "  {} on {} via {}",
                    g.role,
                    safe(&g.scope.to_string()),
                    safe(&g.via_groups.join(", "))
                );
            }
        }
    }
    if let Some(why) = &w.no_role {
        println!("  no role:   {}", safe(why));
    }
    if let Some(end) = &w.session_ends_utc {
        println!("  session ends: {}", safe(end));
    }
    println!("  My IP:     {}", safe(&w.caller_address));
}
