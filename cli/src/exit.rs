//! Exit codes (stable; `EXIT CODES` in `jit --help`), the error that carries one, and the one
//! place where a refusal from the controller is turned into one.

use jitgate_api::ErrorCode;

pub const ERROR: u8 = 1;
pub const USAGE: u8 = 2;
pub const DENIED: u8 = 3;
pub const UNAUTHENTICATED: u8 = 4;
pub const FORBIDDEN: u8 = 5;
pub const NOT_FOUND: u8 = 6;
pub const CONFLICT: u8 = 7;
pub const TIMEOUT: u8 = 8;
pub const VERIFY_FAILED: u8 = 9;
pub const REJECTED: u8 = 10;

/// The `EXIT CODES` section of `jit --help` (and of the man page).
pub const HELP: &str = "EXIT CODES:
  0  success
  1  error talking to the controller (network, TLS, server error)
  2  usage, configuration or invalid input (HTTP 400)
  3  the access request was denied by policy
  4  authentication failed (missing, wrong, expired or revoked token; HTTP 401)
  5  forbidden: the token lacks the right or scope (HTTP 403)
  6  not found (HTTP 404)
  7  conflict, e.g. nothing left to revoke (HTTP 409), a policy changed since it was read
     (HTTP 412), or access was revoked while waiting
  8  timed out waiting for access to be applied
  9  the activity log failed verification
 10  the request ended without access while pending approval: an approver rejected it,
     it timed out waiting for approval, or it was cancelled";

/// Why a command failed, and its exit code. The message is printed terminal-safe.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub msg: String,
}

impl Fail {
    pub fn new(code: u8, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
    }

    pub fn usage(msg: impl Into<String>) -> Fail {
        Fail::new(USAGE, msg)
    }

    pub fn error(msg: impl Into<String>) -> Fail {
        Fail::new(ERROR, msg)
    }
}

pub type R<T> = Result<T, Fail>;

/// The exit code of a call the controller refused: from its error code, which is the stable
/// contract (a script matches it; the HTTP layer may change a status); from the HTTP status
/// alone when the body is not the API's (a proxy's page) or the code is one this version
/// does not know. A code added to the API must be placed here (the match is exhaustive).
pub fn refused(status: u16, code: Option<&ErrorCode>) -> u8 {
    code.and_then(by_code).unwrap_or_else(|| by_status(status))
}

fn by_code(code: &ErrorCode) -> Option<u8> {
    use jitgate_api::ErrorClass as K;
    Some(match code.class()? {
        K::Invalid | K::TooLarge | K::UnsupportedMediaType => USAGE,
        K::Unauthenticated => UNAUTHENTICATED,
        K::Forbidden => FORBIDDEN,
        K::NotFound => NOT_FOUND,
        K::Conflict | K::PreconditionFailed => CONFLICT,
        K::MethodNotAllowed | K::Timeout | K::TooManyRequests | K::Internal | K::Unavailable => {
            ERROR
        }
    })
}

/// What `EXIT CODES` promises for each HTTP status.
pub fn by_status(status: u16) -> u8 {
    match status {
        400 | 413 | 415 => USAGE,
        401 => UNAUTHENTICATED,
        403 => FORBIDDEN,
        404 => NOT_FOUND,
        409 | 412 => CONFLICT,
        _ => ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exit code of every code listed in docs/controller.md's error table is the one
    /// `EXIT CODES` promises for that code's HTTP status.
    #[test]
    fn codes_agree_with_the_documented_statuses() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/controller.md"
        ))
        .unwrap();
        let mut checked = 0;
        for line in doc.lines() {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let (Some(status), Some(codes)) = (cells.next(), cells.next()) else {
                continue;
            };
            let Ok(status) = status.parse::<u16>() else {
                continue;
            };
            // Notes in parentheses may quote other things (`application/json`).
            let mut bare = String::new();
            let mut depth = 0;
            for ch in codes.chars() {
                match ch {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    c if depth == 0 => bare.push(c),
                    _ => {}
                }
            }
            for code in bare.split('`').skip(1).step_by(2) {
                let c: ErrorCode = code.parse().unwrap();
                assert_eq!(refused(status, Some(&c)), by_status(status), "{code}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} codes in the table");
    }

    #[test]
    fn unknown_codes_and_foreign_bodies_follow_the_status() {
        let newer = ErrorCode::Unknown("ApprovalRequired".into());
        assert_eq!(refused(409, Some(&newer)), CONFLICT);
        assert_eq!(refused(404, None), NOT_FOUND);
        assert_eq!(refused(502, None), ERROR);
        // The code decides when the status says otherwise.
        assert_eq!(refused(422, Some(&ErrorCode::InvalidPort)), USAGE);
    }
}
