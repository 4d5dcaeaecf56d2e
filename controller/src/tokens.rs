//! API tokens: authentication of a presented token, and their administration (root on the
//! host: `jit-controller token`).

use jitgate_api::{ErrorCode, Operation, ResourceType, Role, Scope};
use serde::Serialize;

use crate::authz::{self, Action, Caller};
use crate::error::{Error, Result};
use crate::ids;
use crate::input::validate_name;
use crate::store::activity::{self, NewActivity};
use crate::store::db::Db;
use crate::store::tokens::{self, Groups, TokenRow};

/// A token as `jit-controller token list` shows it (never its secret).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub created_time_utc: String,
    pub expires_time_utc: Option<String>,
    pub revoked_time_utc: Option<String>,
    /// Groups its principal belongs to (approver lists name groups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl From<TokenRow> for TokenInfo {
    fn from(t: TokenRow) -> TokenInfo {
        let time = jitgate_api::time::format;
        TokenInfo {
            id: t.id,
            name: t.name,
            role: t.role,
            scope: t.scope,
            created_time_utc: time(t.created_ms),
            expires_time_utc: t.expires_ms.map(time),
            revoked_time_utc: t.revoked_ms.map(time),
            groups: t.groups.0,
        }
    }
}

#[derive(Clone)]
pub struct Tokens {
    db: Db,
    /// `oidc.token_roles`: once people sign in with SSO, the roles new tokens may carry.
    allowed_roles: Option<Vec<Role>>,
}

impl Tokens {
    pub fn new(db: Db, allowed_roles: Option<Vec<Role>>) -> Tokens {
        Tokens { db, allowed_roles }
    }

    /// The caller a presented token stands for; None if unknown, revoked or expired.
    pub async fn authenticate(
        &self,
        token: &str,
        address: std::net::IpAddr,
    ) -> Result<Option<Caller>> {
        if !ids::plausible_token(token) {
            return Ok(None);
        }
        let Some(t) = tokens::by_hash(self.db.pool(), &ids::hash_token(token)).await? else {
            return Ok(None);
        };
        let now = jitgate_api::time::now_ms();
        if t.revoked_ms.is_some() || t.expires_ms.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        Ok(Some(
            Caller::token(t.id, t.name, t.role, t.scope, address).with_groups(t.groups.0),
        ))
    }

    /// Creates a token; returns its info and the secret (shown once, never stored).
    pub async fn create(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        scope: &Scope,
        expires_ms: Option<i64>,
        groups: &[String],
    ) -> Result<(TokenInfo, String)> {
        authz::authorize(caller, Action::Administer)?;
        validate_name("token", name)?;
        if let Some(allowed) = &self.allowed_roles
            && !allowed.contains(&role)
        {
            let list: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
            return Err(Error::refused(
                ErrorCode::InvalidRole,
                format!(
                    "API tokens may carry only the roles [{}] while sign-in with the identity \
                     provider is on (oidc.token_roles); people sign in with `jit login`",
                    list.join(", ")
                ),
            ));
        }
        let mut group_list: Vec<String> = Vec::with_capacity(groups.len());
        for g in groups {
            validate_name("group", g)?;
            if !group_list.contains(g) {
                group_list.push(g.clone());
            }
        }
        let mut w = self.db.begin().await?;
        if expires_ms.is_some_and(|e| e <= w.now) {
            return Err(Error::refused(
                ErrorCode::InvalidTime,
                "the expiry is in the past",
            ));
        }
        let secret = ids::new_token();
        let row = TokenRow {
            id: ids::new_token_id(),
            name: name.into(),
            role,
            scope: scope.clone(),
            created_ms: w.now,
            expires_ms,
            revoked_ms: None,
            groups: Groups(group_list),
        };
        tokens::insert(&mut w, &row, &ids::hash_token(&secret)).await?;
        let info = TokenInfo::from(row);
        activity::log(
            &mut w,
            NewActivity::other(
                Operation::CreateToken,
                ResourceType::Token,
                "",
                &caller.actor(),
            )
            .details(serde_json::json!({"tokenId": info.id, "name": name,
                    "role": role.as_str(), "scope": scope.to_string(),
                    "expiresTimeUtc": info.expires_time_utc, "groups": info.groups})),
        )
        .await?;
        w.commit().await?;
        Ok((info, secret))
    }

    /// Sets (or clears, with None) the email address of the token `id`: where email sinks
    /// reach its principal (as requester or named approver).
    pub async fn set_email(&self, caller: &Caller, id: &str, email: Option<&str>) -> Result<()> {
        authz::authorize(caller, Action::Administer)?;
        let email = match email {
            Some(e) => Some(
                e.trim()
                    .parse::<jitgate_notify::EmailAddress>()
                    .map_err(|_| {
                        Error::refused(
                            ErrorCode::InvalidBody,
                            format!(
                                "{:?} is not an email address",
                                e.chars().take(80).collect::<String>()
                            ),
                        )
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let mut w = self.db.begin().await?;
        if !tokens::set_email(&mut w, id, email.as_deref()).await? {
            return Err(Error::refused(
                ErrorCode::TokenNotFound,
                format!("no token {id}"),
            ));
        }
        activity::log(
            &mut w,
            NewActivity::other(
                Operation::UpdateToken,
                ResourceType::Token,
                "",
                &caller.actor(),
            )
            .details(serde_json::json!({"tokenId": id, "email": email})),
        )
        .await?;
        w.commit().await
    }

    pub async fn list(&self, caller: &Caller) -> Result<Vec<TokenInfo>> {
        authz::authorize(caller, Action::Administer)?;
        Ok(tokens::list(self.db.pool())
            .await?
            .into_iter()
            .map(TokenInfo::from)
            .collect())
    }

    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<()> {
        authz::authorize(caller, Action::Administer)?;
        let mut w = self.db.begin().await?;
        let Some(t) = tokens::by_id(w.conn(), id).await? else {
            return Err(Error::refused(
                ErrorCode::TokenNotFound,
                format!("no token {id}"),
            ));
        };
        if t.revoked_ms.is_some() {
            return Err(Error::refused(
                ErrorCode::TokenAlreadyRevoked,
                format!("token {id} is already revoked"),
            ));
        }
        tokens::set_revoked(&mut w, id).await?;
        activity::log(
            &mut w,
            NewActivity::other(
                Operation::RevokeToken,
                ResourceType::Token,
                "",
                &caller.actor(),
            )
            .details(serde_json::json!({"tokenId": id, "name": t.name})),
        )
        .await?;
        w.commit().await
    }
}
