//! The controller's errors, without HTTP: a refusal carries a stable [`ErrorCode`] (what the
//! caller did wrong or may not do); everything else is the controller's own failure. The HTTP
//! layer (`http::error`) chooses status codes.

use jitgate_api::ErrorCode;

/// What the domain and storage layers return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused, with a stable code: bad input, unknown thing, no right, conflict. Nothing was
    /// written.
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The database holds something this controller cannot read.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A part of the controller that this call needs has stopped (a writer task).
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// Leader work refused at commit: this controller no longer holds the lease it ran under
    /// (another controller took over, or it expired while this one was stalled). Nothing was
    /// written.
    #[error("fenced: the {lease} lease of epoch {epoch} is no longer held by this controller")]
    Fenced { lease: &'static str, epoch: i64 },
    /// Any other failure of the controller itself.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Refused {
            code,
            message: message.into(),
        }
    }

    /// A refusal's message prefixed with where it applies ("port 22: ..."); other errors as
    /// they are.
    pub fn context(self, place: &str) -> Error {
        match self {
            Error::Refused { code, message } => Error::Refused {
                code,
                message: format!("{place}: {message}"),
            },
            e => e,
        }
    }

    /// Stored data that does not parse.
    pub fn corrupt(what: impl std::fmt::Display) -> Error {
        Error::Corrupt(what.to_string())
    }

    /// Whether a write broke a unique constraint (another writer got there first).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Db(sqlx::Error::Database(d)) if d.is_unique_violation())
    }

    /// Whether the database could not be reached (a connection refused, reset or not
    /// handed out in time; the server shutting down or starting): the call changed nothing
    /// and may succeed when retried.
    pub fn database_unavailable(&self) -> bool {
        match self {
            Error::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // SQLSTATE class 08 (connection exception), 57P01..57P03 (admin shutdown,
                // crash shutdown, cannot connect now).
                sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                    c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")
                }),
                _ => false,
            },
            _ => false,
        }
    }

    /// The code of a refusal, `None` for the controller's own failures.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Corrupt(e.to_string())
    }
}

/// Errors of `jit-controller init` and of starting a controller from its state directory.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The reason is part of the message, not a `source`: printed with its chain (`{:#}`),
    /// it would be said twice.
    #[error("{path}: {reason}")]
    Io {
        path: String,
        reason: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Store(#[from] Error),
}

impl SetupError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> SetupError {
        SetupError::Io {
            path: path.to_string(),
            reason: source,
        }
    }
}
