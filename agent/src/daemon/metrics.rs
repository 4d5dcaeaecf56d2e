//! The optional metrics endpoint: Prometheus text over plain HTTP, read-only, loopback unless
//! configured otherwise. The numbers come from the core; the endpoint changes nothing.

use super::core::{Core, Msg};
use jitgate_common::Counter;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// The metrics text, on the core.
pub(super) fn render(core: &Core) -> String {
    let mut s = String::new();
    if let Ok(c) = core.dp.counters() {
        s.push_str("# HELP jitgate_packets_total Packets by verdict and reason.\n# TYPE jitgate_packets_total counter\n");
        for k in Counter::ALL
            .iter()
            .filter(|k| (**k as u32) < Counter::EventsSent as u32)
        {
            let _ = writeln!(
                s,
                "jitgate_packets_total{{reason=\"{}\"}} {}",
                k.name(),
                c.get(*k)
            );
        }
        s.push_str("# HELP jitgate_events_total Data-plane events by outcome.\n# TYPE jitgate_events_total counter\n");
        for (k, label) in [
            (Counter::EventsSent, "sent"),
            (Counter::EventsSuppressed, "suppressed"),
            (Counter::EventsLost, "dropped"),
        ] {
            let _ = writeln!(
                s,
                "jitgate_events_total{{outcome=\"{label}\"}} {}",
                c.get(k)
            );
        }
    }
    let _ = writeln!(
        s,
        "# HELP jitgate_active_grants Grants in the table.\n# TYPE jitgate_active_grants gauge\njitgate_active_grants {}",
        core.grants.len()
    );
    let _ = writeln!(
        s,
        "# HELP jitgate_flows Admitted flows tracked by the kernel.\n# TYPE jitgate_flows gauge\njitgate_flows {}",
        core.dp.flows().len()
    );
    s
}

/// Serves `addr` until the process ends; each scrape asks the core for the text.
pub(super) async fn serve(addr: SocketAddr, core: mpsc::Sender<Msg>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics");
            return;
        }
    };
    tracing::info!(%addr, "metrics endpoint");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read(&mut s, &mut buf),
            )
            .await;
            let (tx, rx) = oneshot::channel();
            if core.send(Msg::Metrics(tx)).await.is_err() {
                return;
            }
            let body = rx.await.unwrap_or_default();
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}
