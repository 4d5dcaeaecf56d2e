//! The `[compliance]` table of controller.toml, validated once at startup.

use std::time::Duration;

use jitgate_api::{PortSpec, ProtoSel};
use jitgate_common::{Port, Protocol, SourcePrefix};
use serde::{Deserialize, Serialize};

use crate::compliance::probe;
use crate::error::SetupError;

fn default_ports() -> Vec<String> {
    ["22/tcp", "3389/tcp", "5985/tcp", "5986/tcp", "3389/udp"]
        .into_iter()
        .map(String::from)
        .collect()
}
fn default_scan() -> u64 {
    1800
}
fn default_probe() -> u64 {
    86_400
}
fn default_grace() -> u64 {
    900
}
fn default_timeout() -> u64 {
    1000
}
fn default_concurrency() -> usize {
    16
}
fn default_rate() -> u32 {
    50
}
fn default_probe_max() -> u64 {
    300
}
fn default_max_addresses() -> usize {
    4096
}
fn default_template_max() -> String {
    "PT3H".into()
}

/// `[compliance]` in controller.toml.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceConfig {
    /// Management ports, `PORT/tcp` or `PORT/udp`.
    #[serde(default = "default_ports")]
    pub management_ports: Vec<String>,
    /// Evaluation interval (0: only on demand).
    #[serde(default = "default_scan")]
    pub scan_every_seconds: u64,
    /// Full network probe interval (0: only on demand).
    #[serde(default = "default_probe")]
    pub probe_every_seconds: u64,
    /// An agent disconnected for longer than this makes its VM non-compliant.
    #[serde(default = "default_grace")]
    pub offline_grace_seconds: u64,
    /// Address ranges (CIDR) probed for unmanaged hosts. Empty: only registered addresses
    /// are probed. Nothing outside these and the registered addresses is ever probed.
    #[serde(default)]
    pub probe_ranges: Vec<String>,
    #[serde(default = "default_timeout")]
    pub probe_timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    pub probe_concurrency: usize,
    /// Connection attempts per second, at most.
    #[serde(default = "default_rate")]
    pub probe_rate_per_second: u32,
    /// A probe stops after this long (what is not tried is reported as not probed).
    #[serde(default = "default_probe_max")]
    pub probe_max_seconds: u64,
    /// Largest number of addresses a probe may cover (ranges plus registered addresses).
    #[serde(default = "default_max_addresses")]
    pub probe_max_addresses: usize,
    /// `maxRequestAccessDuration` of the `default` remediation template.
    #[serde(default = "default_template_max")]
    pub template_max_duration: String,
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        ComplianceConfig {
            management_ports: default_ports(),
            scan_every_seconds: default_scan(),
            probe_every_seconds: default_probe(),
            offline_grace_seconds: default_grace(),
            probe_ranges: Vec::new(),
            probe_timeout_ms: default_timeout(),
            probe_concurrency: default_concurrency(),
            probe_rate_per_second: default_rate(),
            probe_max_seconds: default_probe_max(),
            probe_max_addresses: default_max_addresses(),
            template_max_duration: default_template_max(),
        }
    }
}

/// A management port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MgmtPort {
    pub protocol: Protocol,
    pub port: Port,
}

impl MgmtPort {
    /// `22/TCP`, as findings show it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.port, ProtoSel::from(self.protocol))
    }
}

/// The compliance configuration, validated once at startup.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ports: Vec<MgmtPort>,
    pub scan_every: Option<Duration>,
    pub probe_every: Option<Duration>,
    pub offline_grace_ms: i64,
    pub ranges: Vec<SourcePrefix>,
    pub probe: probe::Limits,
    pub template_max_secs: i64,
    pub template_max: String,
}

impl Settings {
    pub fn from_config(c: &ComplianceConfig) -> Result<Settings, SetupError> {
        let bad = |m: String| SetupError::Invalid(format!("[compliance] {m}"));
        let mut ports = Vec::new();
        for s in &c.management_ports {
            let spec: PortSpec = s
                .parse()
                .map_err(|e| bad(format!("management port {s:?}: {e}")))?;
            let Some(protocol) = spec.protocol.and_then(ProtoSel::concrete) else {
                return Err(bad(format!(
                    "management port {s:?}: use PORT/tcp or PORT/udp"
                )));
            };
            let m = MgmtPort {
                protocol,
                port: spec.port,
            };
            if !ports.contains(&m) {
                ports.push(m);
            }
        }
        if ports.is_empty() {
            return Err(bad("management_ports is empty".into()));
        }
        ports.sort();
        let mut ranges = Vec::new();
        for r in &c.probe_ranges {
            let p: SourcePrefix = r
                .parse()
                .map_err(|e| bad(format!("probe range {r:?}: {e}")))?;
            ranges.push(p);
        }
        let secs = |n: u64| (n > 0).then(|| Duration::from_secs(n));
        if c.probe_concurrency == 0 || c.probe_concurrency > 1024 {
            return Err(bad("probe_concurrency must be 1..=1024".into()));
        }
        if c.probe_rate_per_second == 0 || c.probe_rate_per_second > 10_000 {
            return Err(bad("probe_rate_per_second must be 1..=10000".into()));
        }
        if c.probe_timeout_ms == 0 || c.probe_timeout_ms > 30_000 {
            return Err(bad("probe_timeout_ms must be 1..=30000".into()));
        }
        let template_max_secs = jitgate_api::duration::parse(&c.template_max_duration)
            .map_err(|e| bad(format!("template_max_duration: {e}")))?;
        let s = Settings {
            ports,
            scan_every: secs(c.scan_every_seconds),
            probe_every: secs(c.probe_every_seconds),
            offline_grace_ms: i64::try_from(c.offline_grace_seconds.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            ranges,
            probe: probe::Limits {
                timeout: Duration::from_millis(c.probe_timeout_ms),
                concurrency: c.probe_concurrency,
                rate_per_second: c.probe_rate_per_second,
                max_time: Duration::from_secs(c.probe_max_seconds.max(1)),
                max_addresses: c.probe_max_addresses,
            },
            template_max_secs,
            template_max: c.template_max_duration.clone(),
        };
        // The ranges must fit the address budget (checked again per probe).
        probe::expand(&s.ranges, s.probe.max_addresses).map_err(bad)?;
        Ok(s)
    }

    /// The TCP ports among the management ports (what the probe tries).
    pub fn tcp_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|m| m.protocol == Protocol::Tcp)
            .map(|m| m.port.get())
            .collect()
    }

    pub fn is_mgmt(&self, protocol: Protocol, port: u16) -> bool {
        self.ports
            .iter()
            .any(|m| m.protocol == protocol && m.port.get() == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked_once() {
        let s = Settings::from_config(&ComplianceConfig::default()).unwrap();
        assert_eq!(s.ports.len(), 5);
        assert!(s.is_mgmt(Protocol::Udp, 3389) && !s.is_mgmt(Protocol::Udp, 22));
        assert!(s.ranges.is_empty(), "no probe range unless configured");
        for (bad, why) in [
            (
                ComplianceConfig {
                    management_ports: vec!["22".into()],
                    ..Default::default()
                },
                "PORT/tcp",
            ),
            (
                ComplianceConfig {
                    management_ports: vec!["0/tcp".into()],
                    ..Default::default()
                },
                "0/tcp",
            ),
            (
                ComplianceConfig {
                    management_ports: vec!["22/icmp".into()],
                    ..Default::default()
                },
                "22/icmp",
            ),
            (
                ComplianceConfig {
                    management_ports: vec![],
                    ..Default::default()
                },
                "empty",
            ),
            (
                ComplianceConfig {
                    probe_ranges: vec!["198.51.100.7/24".into()],
                    ..Default::default()
                },
                "probe range",
            ),
            (
                ComplianceConfig {
                    probe_ranges: vec!["198.18.0.0/15".into()],
                    ..Default::default()
                },
                "limit",
            ),
            (
                ComplianceConfig {
                    probe_concurrency: 0,
                    ..Default::default()
                },
                "probe_concurrency",
            ),
            (
                ComplianceConfig {
                    probe_rate_per_second: 0,
                    ..Default::default()
                },
                "probe_rate",
            ),
            (
                ComplianceConfig {
                    probe_timeout_ms: 0,
                    ..Default::default()
                },
                "probe_timeout",
            ),
            (
                ComplianceConfig {
                    template_max_duration: "3h".into(),
                    ..Default::default()
                },
                "template_max",
            ),
        ] {
            let e = Settings::from_config(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
