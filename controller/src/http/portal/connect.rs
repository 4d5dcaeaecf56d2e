//! Connection details built only from validated parts: an address that parsed as an IP
//! address, a port number, and a login name that matched a strict pattern. Nothing a person
//! or an agent wrote reaches a command string or an `.rdp` file unchecked, so the SSH
//! command is safe to paste into a shell and the `.rdp` file holds exactly two lines.

use std::fmt;
use std::net::IpAddr;

use jitgate_api::ErrorCode;

use crate::http::error::HttpError;

/// A login name for SSH or RDP: a lowercase letter or `_`, then up to 31 of lowercase
/// letters, digits, `_`, `-` and `.` (the portable POSIX user-name set, never starting
/// with `-` and never holding a space, quote, newline or control character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginName(String);

impl LoginName {
    pub fn parse(s: &str) -> Result<LoginName, String> {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
        if first_ok && rest_ok && s.len() <= 32 {
            Ok(LoginName(s.to_string()))
        } else {
            Err(format!(
                "login name {:?} is not allowed: use a lowercase letter or _ then up to 31 \
                 lowercase letters, digits, _, - or .",
                s.escape_default().to_string()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LoginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first registered address of a VM that is an IP address (a `/32` or `/128` prefix
/// counts as its address); None when there is none.
pub fn address_of(registered: &[String]) -> Option<IpAddr> {
    registered.iter().find_map(|a| {
        let (ip, len) = a.split_once('/').unwrap_or((a.as_str(), ""));
        let ip: IpAddr = ip.parse().ok()?;
        let host_len = if ip.is_ipv4() { "32" } else { "128" };
        (len.is_empty() || len == host_len).then_some(ip)
    })
}

/// The download of [`rdp_file`]: its file name is built from the address only (nothing a
/// person wrote).
pub fn rdp_download(addr: IpAddr, port: u16, user: Option<&LoginName>) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    (
        [
            (header::CONTENT_TYPE, "application/x-rdp".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"jitgate-{}.rdp\"",
                    addr.to_string().replace(':', "-")
                ),
            ),
        ],
        rdp_file(addr, port, user),
    )
        .into_response()
}

/// An optional login name from a query: absent or empty is none.
pub fn login_of(given: Option<&str>) -> Result<Option<LoginName>, String> {
    given
        .filter(|l| !l.is_empty())
        .map(LoginName::parse)
        .transpose()
}

/// `ssh -p PORT [USER@]ADDRESS`.
pub fn ssh_command(addr: IpAddr, port: u16, user: Option<&LoginName>) -> String {
    match user {
        Some(u) => format!("ssh -p {port} {u}@{addr}"),
        None => format!("ssh -p {port} {addr}"),
    }
}

/// An `.rdp` file with only the address and, when given, the user name.
pub fn rdp_file(addr: IpAddr, port: u16, user: Option<&LoginName>) -> String {
    let host = match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    let mut out = format!("full address:s:{host}\r\n");
    if let Some(u) = user {
        out.push_str(&format!("username:s:{u}\r\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names_are_strict() {
        for ok in ["alice", "_svc", "deploy-2", "a.b", "x"] {
            assert!(LoginName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "Alice",
            "a b",
            "a;rm -rf ~",
            "a\nalternate shell:s:cmd",
            "a\u{202e}b",
            "a'b",
            "a$b",
            &"a".repeat(33),
        ] {
            assert!(LoginName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn details_hold_only_validated_parts() {
        let a: IpAddr = "198.51.100.10".parse().unwrap();
        let u = LoginName::parse("alice").unwrap();
        assert_eq!(
            ssh_command(a, 22, Some(&u)),
            "ssh -p 22 alice@198.51.100.10"
        );
        assert_eq!(ssh_command(a, 2222, None), "ssh -p 2222 198.51.100.10");
        assert_eq!(
            rdp_file(a, 3389, Some(&u)),
            "full address:s:198.51.100.10:3389\r\nusername:s:alice\r\n"
        );
        let v6: IpAddr = "2001:db8::5".parse().unwrap();
        assert_eq!(
            rdp_file(v6, 3389, None),
            "full address:s:[2001:db8::5]:3389\r\n"
        );
        assert_eq!(
            address_of(&["not an address".into(), "2001:db8::5/128".into()]),
            Some(v6)
        );
        assert_eq!(address_of(&["198.51.100.0/24".into()]), None);
    }
}

/// What the connect buttons ask for: the port they preselect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectKind {
    Ssh,
    Rdp,
}

impl ConnectKind {
    pub fn parse(s: Option<&str>) -> Result<Option<ConnectKind>, HttpError> {
        match s.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some("ssh") => Ok(Some(ConnectKind::Ssh)),
            Some("rdp") => Ok(Some(ConnectKind::Rdp)),
            Some(o) => Err(HttpError::new(
                ErrorCode::InvalidQuery,
                format!("connect {o:?}: use ssh or rdp"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectKind::Ssh => "ssh",
            ConnectKind::Rdp => "rdp",
        }
    }

    pub fn port(self) -> u32 {
        match self {
            ConnectKind::Ssh => 22,
            ConnectKind::Rdp => 3389,
        }
    }
}

/// Where the request page shows connection details for, carried in its address.
pub fn details_query(connect: Option<ConnectKind>, login: &str) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    if let Some(c) = connect {
        s.append_pair("connect", c.as_str());
    }
    if !login.is_empty() {
        s.append_pair("login", login);
    }
    let q = s.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}
