//! The external check: from the controller's own host, a TCP connect to each target address
//! on each TCP management port. Only registered VM addresses and explicitly configured
//! ranges are ever targets; attempts are rate-limited, concurrency-bounded, each with a short
//! timeout, and the whole probe stops after `max_time`. UDP ports are not probed (a silent
//! UDP port proves nothing); agents report them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use jitgate_common::SourcePrefix;

/// Bounds of one probe.
#[derive(Clone, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub concurrency: usize,
    pub rate_per_second: u32,
    pub max_time: Duration,
    pub max_addresses: usize,
}

/// A TCP connect that succeeded: `local` is the controller's own address for it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Open {
    pub target: SocketAddr,
    pub local: IpAddr,
}

/// What a probe did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub open: Vec<Open>,
    pub attempted: usize,
    /// Attempts not made because `max_time` ran out.
    pub skipped: usize,
}

/// Every host address in `ranges` (IPv4 network and broadcast addresses left out), refused
/// if more than `max` in total.
pub fn expand(ranges: &[SourcePrefix], max: usize) -> Result<Vec<IpAddr>, String> {
    let mut out = BTreeSet::new();
    for r in ranges {
        let len = r.prefix_len();
        match r.addr() {
            IpAddr::V4(a) => {
                let host_bits = 32 - u32::from(len);
                let n: u64 = 1u64 << host_bits;
                if n as usize > max {
                    return Err(format!(
                        "probe range {r} has {n} addresses; the limit is {max}"
                    ));
                }
                let base = u32::from(a);
                for i in 0..n {
                    // Network and broadcast addresses of ranges wider than /31 are no hosts.
                    if host_bits >= 2 && (i == 0 || i == n - 1) {
                        continue;
                    }
                    out.insert(IpAddr::V4(Ipv4Addr::from(base + i as u32)));
                }
            }
            IpAddr::V6(a) => {
                let host_bits = 128 - u32::from(len);
                if host_bits >= 63 || (1u64 << host_bits) as usize > max {
                    return Err(format!(
                        "probe range {r} is too large; the limit is {max} addresses"
                    ));
                }
                let base = u128::from(a);
                for i in 0..(1u128 << host_bits) {
                    out.insert(IpAddr::V6(Ipv6Addr::from(base + i)));
                }
            }
        }
        if out.len() > max {
            return Err(format!("the probe ranges hold more than {max} addresses"));
        }
    }
    Ok(out.into_iter().collect())
}

/// Tries every (address, TCP port) pair within `limits`.
pub async fn run(addresses: &[IpAddr], ports: &[u16], limits: &Limits) -> Outcome {
    let targets: Vec<SocketAddr> = addresses
        .iter()
        .flat_map(|a| ports.iter().map(move |p| SocketAddr::new(*a, *p)))
        .collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(limits.concurrency));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / limits.rate_per_second.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::Instant::now() + limits.max_time;
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Outcome::default();
    for (i, t) in targets.iter().enumerate() {
        tick.tick().await;
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = tokio::time::sleep_until(deadline) => {
                out.skipped = targets.len() - i;
                break;
            }
        };
        if tokio::time::Instant::now() >= deadline {
            out.skipped = targets.len() - i;
            break;
        }
        out.attempted += 1;
        let (t, timeout) = (*t, limits.timeout);
        tasks.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(t)).await {
                Ok(Ok(s)) => {
                    let local = s.local_addr().ok()?.ip();
                    tracing::info!(target = %t, %local, "probe: port accepts");
                    Some(Open {
                        target: t,
                        local: jitgate_common::net::normalise(local),
                    })
                }
                _ => None,
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(o)) = r {
            out.open.push(o);
        }
    }
    out.open.sort();
    tracing::info!(
        attempted = out.attempted,
        open = out.open.len(),
        skipped = out.skipped,
        "probe finished"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_within_the_limit_only() {
        let r: SourcePrefix = "198.51.100.0/29".parse().unwrap();
        let v = expand(&[r], 100).unwrap();
        assert_eq!(v.len(), 6, "network and broadcast left out: {v:?}");
        assert_eq!(v[0].to_string(), "198.51.100.1");
        let one: SourcePrefix = "198.51.100.7/32".parse().unwrap();
        assert_eq!(expand(&[one], 1).unwrap().len(), 1);
        let big: SourcePrefix = "198.18.0.0/15".parse().unwrap();
        assert!(expand(&[big], 4096).is_err());
        let v6: SourcePrefix = "2001:db8::/64".parse().unwrap();
        assert!(expand(&[v6], 4096).is_err());
        let v6: SourcePrefix = "2001:db8::/126".parse().unwrap();
        assert_eq!(expand(&[v6], 10).unwrap().len(), 4);
    }

    #[tokio::test]
    async fn finds_an_open_port_on_loopback_and_not_a_closed_one() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap().port();
        let closed = {
            let c = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            c.local_addr().unwrap().port()
        };
        let limits = Limits {
            timeout: Duration::from_millis(500),
            concurrency: 2,
            rate_per_second: 100,
            max_time: Duration::from_secs(10),
            max_addresses: 10,
        };
        let out = run(&["127.0.0.1".parse().unwrap()], &[open, closed], &limits).await;
        assert_eq!(out.attempted, 2);
        assert_eq!(out.open.len(), 1, "{out:?}");
        assert_eq!(out.open[0].target.port(), open);
        assert_eq!(out.open[0].local.to_string(), "127.0.0.1");
    }
}
