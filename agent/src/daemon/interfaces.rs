//! The interfaces the program runs on: attaching to every device the configuration names
//! (also ones that appear later, announced by netlink), refusing link types it cannot parse,
//! and forgetting devices that went away.

use crate::audit::AuditEvent;
use crate::config::glob_match;
use crate::dataplane::{AttachMode, Dataplane};
use crate::link::LinkLayer;
use jitgate_proto::AuditKind;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

/// An interface the program runs on. The ifindex tells a device from a later one that took
/// its name (a tunnel deleted and created again between two rescans).
#[derive(Clone, Copy)]
pub(super) struct Attached {
    ifindex: u32,
    pub mode: AttachMode,
    pub link: LinkLayer,
}

#[derive(Default)]
pub(super) struct Interfaces {
    attached: BTreeMap<String, Attached>,
    /// Devices (name, ifindex) refused for their link type: reported once, not at every
    /// rescan. A new device under the same name gets its own try.
    refused: BTreeSet<(String, u32)>,
}

impl Interfaces {
    /// The interfaces enforced on, by name.
    pub fn attached(&self) -> &BTreeMap<String, Attached> {
        &self.attached
    }

    /// Attaches to every present device that `patterns` name and is not yet attached (or whose
    /// link type changed); returns the audit records of what happened.
    pub fn rescan(&mut self, dp: &mut Dataplane, patterns: &[String]) -> Vec<AuditEvent> {
        let Ok(ifaces) = nix::net::if_::if_nameindex() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for i in ifaces.iter() {
            let name = i.name().to_string_lossy().into_owned();
            let ifindex = i.index();
            let wanted = patterns.iter().any(|p| {
                if name == "lo" {
                    p == "lo"
                } else {
                    glob_match(p, &name)
                }
            });
            if !wanted {
                continue;
            }
            // A device's link type can change while it is down (tun's TUNSETLINK, with a
            // link event): a known device whose type no longer matches its program is
            // attached again, which swaps the program or refuses the device.
            let layer = crate::link::link_layer(&name).ok();
            let known = match self.attached.get(&name) {
                Some(a) if a.ifindex == ifindex => layer == Some(a.link),
                _ => layer.is_none() && self.refused.contains(&(name.clone(), ifindex)),
            };
            if known {
                continue;
            }
            match dp.attach(&name) {
                Ok(a) => {
                    tracing::info!(iface = %name, mode = a.mode.as_str(), link = a.link.as_str(), replaced = a.replaced, "enforcing");
                    let mut e = AuditEvent::new(AuditKind::InterfaceAttached, "agent");
                    e.reason = Some(format!(
                        "{} mode, {} program{}",
                        a.mode.as_str(),
                        a.link.as_str(),
                        if a.replaced {
                            ", program replaced in place"
                        } else {
                            ""
                        }
                    ));
                    e.source = Some(name.clone());
                    events.push(e);
                    let (mode, link) = (a.mode, a.link);
                    self.attached.insert(
                        name,
                        Attached {
                            ifindex,
                            mode,
                            link,
                        },
                    );
                }
                Err(err) => {
                    tracing::error!(iface = %name, error = %err, "cannot attach");
                    if matches!(err, crate::error::Error::UnsupportedLink { .. }) {
                        self.refused.insert((name.clone(), ifindex));
                        // A program for the old link type would mis-parse every packet: it
                        // goes, and the device is reported as not enforced.
                        if self.attached.remove(&name).is_some()
                            && let Err(e) = dp.detach(&name)
                        {
                            tracing::error!(iface = %name, error = %e, "cannot detach");
                        }
                    }
                    let mut e = AuditEvent::new(AuditKind::InterfaceAttachFailed, "agent");
                    e.source = Some(name.clone());
                    e.reason = Some(err.to_string());
                    events.push(e);
                }
            }
        }
        // Interfaces that went away lose their (now defunct) links.
        let present: BTreeSet<String> = ifaces
            .iter()
            .map(|i| i.name().to_string_lossy().into_owned())
            .collect();
        self.attached.retain(|n, _| present.contains(n));
        self.refused.retain(|(n, _)| present.contains(n));
        events
    }
}

/// Every address of every non-loopback interface, as (interface, address).
pub(super) fn addresses() -> Vec<(String, String)> {
    let mut out = Vec::new();
    match nix::ifaddrs::getifaddrs() {
        Ok(it) => {
            for a in it {
                if a.flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
                {
                    continue;
                }
                let Some(addr) = a.address else { continue };
                let ip: Option<IpAddr> = if let Some(v4) = addr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                };
                if let Some(ip) = ip {
                    out.push((a.interface_name.clone(), ip.to_string()));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list interface addresses"),
    }
    out.sort();
    out.dedup();
    out
}

/// Watches the kernel's link announcements and asks the core to rescan interfaces.
pub(super) fn watch_links(rescan: Arc<tokio::sync::Notify>) {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        tracing::warn!("cannot watch interfaces (netlink): new interfaces need a restart");
        return;
    }
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: valid address for the call.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        tracing::warn!("cannot subscribe to link events: new interfaces need a restart");
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        return;
    }
    let mut buf = vec![0u8; 16384];
    loop {
        // SAFETY: buf is valid for writes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
        rescan.notify_one();
    }
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
}
