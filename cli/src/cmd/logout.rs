//! `jit logout`: ends the session at the controller (which revokes the identity provider's
//! refresh token) and forgets the saved credential.

use crate::client::Client;
use crate::config::{Settings, remove_session};
use crate::exit::{Fail, R, UNAUTHENTICATED};

pub async fn run(c: &Client, s: &Settings) -> R<()> {
    let Some(path) = &s.session_path else {
        return Err(Fail::usage(
            "no saved session: set HOME, JIT_CONFIG or --config",
        ));
    };
    if !path.exists() {
        return Err(Fail::usage(format!(
            "not signed in: there is no saved session ({})",
            path.display()
        )));
    }
    // Ended already (revoked, expired) is fine: the file goes anyway.
    match c.logout().await {
        Ok(()) => {}
        Err(f) if f.code == UNAUTHENTICATED => {}
        Err(f) => return Err(f),
    }
    remove_session(path)?;
    println!("Signed out.");
    Ok(())
}
