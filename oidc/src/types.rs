//! The `openidconnect` types, parameterised for jitgate: every claim kept (the groups and name
//! claims are configurable), and the discovery fields the core metadata lacks.

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, DeviceAuthorizationUrl, EmptyExtraTokenFields,
    EndpointNotSet, IdTokenFields, StandardErrorResponse, StandardTokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Claims beyond the standard ones, all kept: `groups_claim` and `name_claim` are names the
/// operator chooses, and `nbf` and Entra's overage markers are read from here.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ExtraClaims {
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl AdditionalClaims for ExtraClaims {}

/// Discovery fields that the core metadata type does not carry.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ExtraMetadata {
    /// RFC 8628 §4.
    #[serde(default)]
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
    /// RFC 7636 / RFC 8414 §2; absent at some providers that support S256 all the same.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// RFC 7009 / RFC 8414 §2: where sign-out revokes the refresh token.
    #[serde(default)]
    pub revocation_endpoint: Option<openidconnect::RevocationUrl>,
    /// RFC 9207: the provider puts `iss` on every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

pub(crate) type Metadata = openidconnect::ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

pub(crate) type Jwks = openidconnect::JsonWebKeySet<CoreJsonWebKey>;

pub(crate) type IdToken = openidconnect::IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

pub(crate) type TokenResponse = StandardTokenResponse<
    IdTokenFields<
        ExtraClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

/// A client with its authorization and token endpoints set; the device endpoint per flow.
pub(crate) type OidcClient<HasDevice> = openidconnect::Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    HasDevice,
    EndpointNotSet,
    EndpointNotSet,
    openidconnect::EndpointSet,
    EndpointNotSet,
>;
