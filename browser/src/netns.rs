//! Reaching a server inside a network namespace (chromedriver on its loopback, a controller on
//! a lab address) from this one: a listener on this namespace's loopback whose connections are
//! forwarded to sockets opened inside the other namespace (by one thread that entered it; a
//! socket keeps its namespace).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::BrowserError;

type ConnectRequest = (SocketAddr, oneshot::Sender<std::io::Result<TcpStream>>);

/// Opens TCP connections inside a network namespace.
#[derive(Clone)]
struct NsConnector(mpsc::Sender<ConnectRequest>);

impl NsConnector {
    /// A thread that enters the namespace at `ns` and opens connections on request; it ends
    /// when the last connector is dropped.
    fn start(ns: &Path) -> Result<NsConnector, BrowserError> {
        let file = std::fs::File::open(ns).map_err(|e| BrowserError::new(ns.display(), e))?;
        let (tx, rx) = mpsc::channel::<ConnectRequest>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("browser-netns".into())
            .spawn(move || {
                let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                while let Ok((addr, reply)) = rx.recv() {
                    let _ = reply.send(TcpStream::connect(addr));
                }
            })
            .map_err(|e| BrowserError::new("starting the namespace thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NsConnector(tx)),
            Ok(Err(e)) => Err(BrowserError::new(
                format!("entering the network namespace {}", ns.display()),
                e,
            )),
            Err(e) => Err(BrowserError::new("the namespace thread", e)),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((addr, tx))
            .map_err(|_| std::io::Error::other("the namespace thread has gone"))?;
        let s = rx
            .await
            .map_err(|_| std::io::Error::other("the namespace thread has gone"))??;
        s.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(s)
    }
}

/// `127.0.0.1:port` here (a free port), forwarded to `to` inside a namespace; it stops when
/// dropped. Needs a tokio runtime (its connections are tasks).
pub struct Forwarder {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Forwarder(127.0.0.1:{})", self.port)
    }
}

impl Forwarder {
    /// Listens on a free loopback port here and forwards each connection to `to` inside the
    /// namespace at `ns` (`/run/netns/NAME`; needs root).
    pub async fn start(ns: &Path, to: SocketAddr) -> Result<Forwarder, BrowserError> {
        let connector = NsConnector::start(ns)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BrowserError::new("forwarder listener", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| BrowserError::new("forwarder listener", e))?
            .port();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let c = connector.clone();
                tokio::spawn(async move {
                    if let Ok(mut out) = c.connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Ok(Forwarder { port, task })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
