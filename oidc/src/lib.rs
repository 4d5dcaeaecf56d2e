//! jitgate as an OpenID Connect relying party.

mod config;
mod error;
mod files;
mod grants;
mod http;
mod identity;
mod login;
mod provider;
mod redirect;
mod replay;
mod roles;
mod rp;
mod seal;
mod types;
mod validate;

pub use config::{ConfigError, MAX_SESSION_LIFETIME, MIN_SESSION_LIFETIME, OidcConfig};
pub use error::{Error, StateError, TokenRejected};
pub use files::SecretFileError;
pub use grants::{PendingDevice, RefreshGrant};
pub use http::TlsSetupError;
pub use identity::{Email, Groups, GroupsUnknown, Identity, Principal};
pub use login::{
    CallbackParams, CheckedCallback, ClientKind, LOGIN_STATE_LIFETIME, LoginRequest, PendingLogin,
    ReplayKey,
};
pub use provider::ProviderStatus;
pub use redirect::{LoopbackRedirect, ReturnPath};
pub use replay::{MemoryReplayGuard, ReplayGuard, StoreError};
pub use roles::{NoRole, RoleGrant, RoleRule, map_roles};
pub use rp::{DevicePoll, DeviceStart, LoginStart, Options, RelyingParty, SetupError, SignIn};
pub use seal::{KEY_LEN, KeyFileError, SealKey, Sealer, Unsealable};
pub use validate::{ALLOWED_ALGS, CLOCK_SKEW_SECS, MAX_ID_TOKEN_AGE_SECS};
