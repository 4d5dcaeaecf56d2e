//! The local admin interface: a Unix socket (mode 0600, root only) speaking one JSON request
//! per line and one JSON response per line. `jit-agent grant|revoke|grants|status|audit` are
//! its clients. This is the break-glass path: it works with the controller unreachable.

use crate::audit::{AuditLine, Verified};
use crate::config::ProtoSpec;
use crate::grant::GrantRecord;
use jitgate_common::{MaxConnections, Port, SourcePrefix};
use serde::{Deserialize, Serialize};
use std::path::Path;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Requests are at most this long; a longer line is refused before it is parsed.
pub const MAX_REQUEST: usize = 1 << 20;
/// Longest justification accepted.
pub const MAX_JUSTIFICATION: usize = 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Grant(GrantRequest),
    /// Several grants, applied and made durable together.
    GrantBatch(Vec<GrantRequest>),
    Revoke {
        id: String,
    },
    Grants,
    Status,
    Audit {
        follow: bool,
        tail: Option<usize>,
    },
    AuditVerify,
    Detach,
}

/// A local grant. Exactly one of `duration_secs` and `until`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantRequest {
    pub port: Port,
    /// `tcp`, `udp` or `*` (both: two grants).
    pub protocol: String,
    pub source: SourcePrefix,
    #[serde(default)]
    pub duration_secs: Option<u64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    #[serde(default)]
    pub justification: Option<String>,
    /// Admit at most this many new connections (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<MaxConnections>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Granted {
        grants: Vec<GrantRecord>,
    },
    Revoked {
        id: String,
        flows_cut: usize,
    },
    /// Open grants, then bookings waiting for their start.
    Grants {
        grants: Vec<GrantRecord>,
        #[serde(default)]
        scheduled: Vec<BookedGrant>,
        /// The kernel's count for each open grant with a connection limit.
        #[serde(default)]
        connections: Vec<ConnectionUse>,
    },
    Status(Box<Status>),
    Audit {
        line: Box<AuditLine>,
    },
    AuditEnd,
    Verified(Verified),
    Detached,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// How much of its connection limit an open grant has used, as the kernel counts it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionUse {
    pub id: crate::grant::GrantId,
    /// New connections admitted so far (at most `limit`).
    pub admitted: u64,
    pub limit: MaxConnections,
}

/// A booked grant as `jit-agent grants` lists it: not in the maps until `opens`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BookedGrant {
    /// `start` is the booked start.
    pub grant: GrantRecord,
    /// When it opens by this host's clocks: its start, or later if the controller's count
    /// of the time to the start says so.
    #[serde(with = "time::serde::rfc3339")]
    pub opens: OffsetDateTime,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Bad input: nothing was changed.
    Invalid,
    NotFound,
    /// The request was valid but the agent could not carry it out.
    Internal,
    Unauthorized,
    /// The audit chain does not verify.
    Tampered,
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub program_id: u32,
    pub pin_dir: String,
    pub interfaces: Vec<InterfaceStatus>,
    pub protected: Vec<String>,
    pub counters: Vec<(String, u64)>,
    pub active_grants: usize,
    pub flows: usize,
    pub audit_head: String,
    pub audit_seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// Enrolled agents: the controller endpoint connected to now (`None`: not connected).
    #[serde(default)]
    pub controller: Option<String>,
    /// Whether the agent is enrolled with a controller.
    #[serde(default)]
    pub enrolled: bool,
    /// Enrolled agents: when the certificate expires (renewed over the channel before).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub certificate_expires: Option<OffsetDateTime>,
    /// Why the certificate cannot be renewed (refused by the controller, expired past the
    /// grace: re-enrol), if so.
    #[serde(default)]
    pub certificate_problem: Option<String>,
    /// Why the controller last closed the connection on purpose ("revoked by the
    /// controller"), until one welcomes the agent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by_controller: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InterfaceStatus {
    pub name: String,
    /// `driver` or `generic`.
    pub mode: String,
    /// `ethernet`, or `ip` for tunnels (the program that parses from the IP header).
    #[serde(default)]
    pub link: String,
    /// The hook it runs at (absent when it could not be read: see `problem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<jitgate_proto::HookKind>,
    /// Its place in that hook's chain (0: first) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// ... of this many programs, jitgate's included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programs: Option<u32>,
    /// The programs that see packets before jitgate does, first first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<jitgate_proto::ProgramAhead>,
    /// What is wrong with its place there (another program ahead, its slot gone), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Parses a grant port argument: `22`, `22/tcp`, `22/udp`, `22/*`.
pub fn parse_port_arg(s: &str) -> Result<(Port, String), String> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.to_string()),
        None => (s, "tcp".to_string()),
    };
    let port: Port = port
        .parse()
        .map_err(|e: jitgate_common::ParseError| format!("--port {s:?}: {e}"))?;
    proto
        .parse::<ProtoSpec>()
        .map_err(|e| format!("--port {s:?}: {e}"))?;
    Ok((port, proto))
}

/// Parses a source prefix argument with a message that names the flag.
pub fn parse_source_arg(s: &str) -> Result<SourcePrefix, String> {
    s.parse()
        .map_err(|e: jitgate_common::ParseError| format!("--source {s:?}: {e}"))
}

/// A connection to the agent.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path}: {source} (is jit-agent running? are you root?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent sent something that is not a response: {0}")]
    Protocol(String),
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (r, w) = s.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(())
    }

    /// The next response; `None` when the agent closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Response>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req).await?;
        self.recv()
            .await?
            .ok_or_else(|| ClientError::Protocol("connection closed".into()))
    }
}
