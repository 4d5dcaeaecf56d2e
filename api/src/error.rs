//! The error body and its stable codes (docs/controller.md, "Errors").

use serde::{Deserialize, Serialize};

use crate::wire::wire_enum;

wire_enum! {
    /// Every code the controller returns. Scripts may match on them; the HTTP status of each
    /// is chosen by the controller's HTTP layer (and listed in docs/controller.md).
    pub enum ErrorCode("error code", Unknown) {
        // 400
        InvalidJson = "InvalidJson",
        InvalidBody = "InvalidBody",
        InvalidQuery = "InvalidQuery",
        InvalidPort = "InvalidPort",
        InvalidProtocol = "InvalidProtocol",
        InvalidSourcePrefix = "InvalidSourcePrefix",
        InvalidDuration = "InvalidDuration",
        InvalidTime = "InvalidTime",
        InvalidName = "InvalidName",
        InvalidPolicy = "InvalidPolicy",
        InvalidRequest = "InvalidRequest",
        InvalidForwardedFor = "InvalidForwardedFor",
        InvalidRole = "InvalidRole",
        InvalidScope = "InvalidScope",
        InvalidCsr = "InvalidCsr",
        InvalidScan = "InvalidScan",
        InvalidRange = "InvalidRange",
        RangeNotAllowed = "RangeNotAllowed",
        /// A notification sink that does not validate (format, target, scope, secret name).
        InvalidSink = "InvalidSink",
        /// A secret name or value that is not acceptable.
        InvalidSecret = "InvalidSecret",
        /// A sink's URL resolves to an address the controller may not contact.
        BlockedAddress = "BlockedAddress",
        /// A declaration document (`jit apply`) that does not hold together.
        InvalidDocument = "InvalidDocument",
        // 401
        Unauthenticated = "Unauthenticated",
        InvalidEnrollmentToken = "InvalidEnrollmentToken",
        /// An OpenID Connect sign-in was refused (forged or expired token, replayed
        /// callback, wrong state, the provider said no).
        SignInRefused = "SignInRefused",
        // 403
        Forbidden = "Forbidden",
        // 404
        VmNotFound = "VmNotFound",
        ResourceGroupNotFound = "ResourceGroupNotFound",
        PolicyNotFound = "PolicyNotFound",
        RequestNotFound = "RequestNotFound",
        TokenNotFound = "TokenNotFound",
        GrantNotFound = "GrantNotFound",
        AgentNotFound = "AgentNotFound",
        AssignmentNotFound = "AssignmentNotFound",
        TemplateNotFound = "TemplateNotFound",
        SinkNotFound = "SinkNotFound",
        SessionNotFound = "SessionNotFound",
        /// Sign-in (or this flow of it) is not configured on this controller.
        SignInNotConfigured = "SignInNotConfigured",
        NoSuchRoute = "NoSuchRoute",
        // 405
        MethodNotAllowed = "MethodNotAllowed",
        // 408
        RequestTimeout = "RequestTimeout",
        // 409
        RequestNotActive = "RequestNotActive",
        /// The request is no longer waiting for a decision (decided, cancelled, timed out).
        RequestNotPending = "RequestNotPending",
        /// The principal already decided on this request (one principal counts once).
        AlreadyDecided = "AlreadyDecided",
        /// The requester has as many requests pending as allowed.
        TooManyPending = "TooManyPending",
        /// An agent of the VM does not understand what the request needs (e.g. a booked start).
        AgentTooOld = "AgentTooOld",
        VmExists = "VmExists",
        ResourceGroupExists = "ResourceGroupExists",
        TokenAlreadyRevoked = "TokenAlreadyRevoked",
        AssignmentExists = "AssignmentExists",
        EmptyActivityLog = "EmptyActivityLog",
        SinkExists = "SinkExists",
        /// The sink comes from controller.toml: change it there.
        SinkInConfigFile = "SinkInConfigFile",
        /// This controller cannot send notifications (no trusted certificate authority).
        NotificationsUnavailable = "NotificationsUnavailable",
        SessionEnded = "SessionEnded",
        /// The object is still used (a VM with an enrolled agent, a group with VMs).
        ResourceInUse = "ResourceInUse",
        // 412
        /// The stored policy is no longer the version named by `If-Match` (or exists despite
        /// `If-None-Match: *`): nothing was changed; read it again.
        PolicyChanged = "PolicyChanged",
        // 413
        BodyTooLarge = "BodyTooLarge",
        // 415
        UnsupportedMediaType = "UnsupportedMediaType",
        // 429
        TooManyRequests = "TooManyRequests",
        // 500
        InternalError = "InternalError",
        // 503
        /// The OpenID provider cannot be reached (discovery is retried).
        SignInUnavailable = "SignInUnavailable",
        /// The database cannot be reached now (restarting, failing over, unreachable):
        /// nothing was changed; try again.
        DatabaseUnavailable = "DatabaseUnavailable",
    }
}

/// What kind of refusal a code is: the one grouping of the codes that the controller (HTTP
/// status) and `jit` (exit code) both map from, so the two can never disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The input was malformed or not allowed (400).
    Invalid,
    /// No or a bad credential (401).
    Unauthenticated,
    /// The caller may not do this (403).
    Forbidden,
    /// What was named does not exist (404).
    NotFound,
    /// The method is not served on this path (405).
    MethodNotAllowed,
    /// The request took too long to arrive (408).
    Timeout,
    /// The state does not allow it (409).
    Conflict,
    /// The object is not the version the caller named (412).
    PreconditionFailed,
    /// The body is too large (413).
    TooLarge,
    /// The body is not JSON (415).
    UnsupportedMediaType,
    /// Too many attempts from this address; try again later (429).
    TooManyRequests,
    /// The controller failed; nothing was changed (500).
    Internal,
    /// A service the call needs (the OpenID provider, the database) is unreachable for now
    /// (503).
    Unavailable,
}

impl ErrorCode {
    /// The code's class; `None` for a code this build does not know.
    pub fn class(&self) -> Option<ErrorClass> {
        use ErrorClass as K;
        use ErrorCode as C;
        Some(match self {
            C::InvalidJson
            | C::InvalidBody
            | C::InvalidQuery
            | C::InvalidPort
            | C::InvalidProtocol
            | C::InvalidSourcePrefix
            | C::InvalidDuration
            | C::InvalidTime
            | C::InvalidName
            | C::InvalidPolicy
            | C::InvalidRequest
            | C::InvalidForwardedFor
            | C::InvalidRole
            | C::InvalidScope
            | C::InvalidCsr
            | C::InvalidScan
            | C::InvalidRange
            | C::RangeNotAllowed
            | C::InvalidSink
            | C::InvalidSecret
            | C::BlockedAddress
            | C::InvalidDocument => K::Invalid,
            C::Unauthenticated | C::InvalidEnrollmentToken | C::SignInRefused => K::Unauthenticated,
            C::Forbidden => K::Forbidden,
            C::VmNotFound
            | C::ResourceGroupNotFound
            | C::PolicyNotFound
            | C::RequestNotFound
            | C::TokenNotFound
            | C::GrantNotFound
            | C::AgentNotFound
            | C::AssignmentNotFound
            | C::TemplateNotFound
            | C::SinkNotFound
            | C::SessionNotFound
            | C::SignInNotConfigured
            | C::NoSuchRoute => K::NotFound,
            C::MethodNotAllowed => K::MethodNotAllowed,
            C::RequestTimeout => K::Timeout,
            C::RequestNotActive
            | C::VmExists
            | C::ResourceGroupExists
            | C::TokenAlreadyRevoked
            | C::AssignmentExists
            | C::EmptyActivityLog
            | C::SessionEnded
            | C::RequestNotPending
            | C::AlreadyDecided
            | C::TooManyPending
            | C::AgentTooOld
            | C::SinkExists
            | C::SinkInConfigFile
            | C::NotificationsUnavailable
            | C::ResourceInUse => K::Conflict,
            C::PolicyChanged => K::PreconditionFailed,
            C::BodyTooLarge => K::TooLarge,
            C::UnsupportedMediaType => K::UnsupportedMediaType,
            C::TooManyRequests => K::TooManyRequests,
            C::InternalError => K::Internal,
            C::SignInUnavailable | C::DatabaseUnavailable => K::Unavailable,
            C::Unknown(_) => return None,
        })
    }
}

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people; not stable.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_kept() {
        for c in ErrorCode::known() {
            assert_eq!(c.as_str().parse::<ErrorCode>(), Ok(c.clone()));
        }
        let b: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"ApprovalRequired","message":"m"},"x":1}"#)
                .unwrap();
        assert_eq!(b.error.code, ErrorCode::Unknown("ApprovalRequired".into()));
        assert_eq!(
            serde_json::to_string(&ErrorBody::new(ErrorCode::VmNotFound, "no VM x")).unwrap(),
            r#"{"error":{"code":"VmNotFound","message":"no VM x"}}"#
        );
    }
}
