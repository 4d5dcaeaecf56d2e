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
        // 401
        Unauthenticated = "Unauthenticated",
        InvalidEnrollmentToken = "InvalidEnrollmentToken",
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
        NoSuchRoute = "NoSuchRoute",
        // 405
        MethodNotAllowed = "MethodNotAllowed",
        // 408
        RequestTimeout = "RequestTimeout",
        // 409
        RequestNotActive = "RequestNotActive",
        VmExists = "VmExists",
        ResourceGroupExists = "ResourceGroupExists",
        TokenAlreadyRevoked = "TokenAlreadyRevoked",
        AssignmentExists = "AssignmentExists",
        EmptyActivityLog = "EmptyActivityLog",
        // 413
        BodyTooLarge = "BodyTooLarge",
        // 415
        UnsupportedMediaType = "UnsupportedMediaType",
        // 500
        InternalError = "InternalError",
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
