//! Where notifications are sent from: a thread of their own, at a lower CPU priority
//! (nice +15), with a single-threaded runtime. Rendering, signing, TLS and HTTP of every
//! delivery run there, so a busy sink takes CPU only when the request path leaves some:
//! the request path never waits for notifications, and does not compete with them either.
//! The database stays on the controller's runtime (the worker claims and records there).

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::SetupError;

/// How much lower than the controller's own threads the sending thread runs.
const NICE: libc::c_int = 15;

/// A handle to the sending thread; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct Sender {
    handle: Handle,
    _stop: Arc<Stop>,
}

struct Stop(Option<oneshot::Sender<()>>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Sender {
    /// Starts the thread.
    pub fn start() -> Result<Sender, SetupError> {
        let (handle_tx, handle_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("jit-notify-send".into())
            .spawn(move || {
                lower_priority();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| SetupError::io("the notification sending thread", e))?;
        let handle = handle_rx
            .recv()
            .map_err(|_| {
                SetupError::Invalid("the notification sending thread did not start".into())
            })?
            .map_err(|e| SetupError::io("the notification sending runtime", e))?;
        Ok(Sender {
            handle,
            _stop: Arc::new(Stop(Some(stop_tx))),
        })
    }

    /// Runs `work` on the sending thread and waits for it; None if that thread is gone
    /// (the controller is stopping).
    pub async fn run<F>(&self, work: F) -> Option<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(work).await.ok()
    }
}

/// This thread only (Linux: `setpriority` with `PRIO_PROCESS` and the thread's id). A
/// failure leaves it at the normal priority, which is correct, only less polite.
fn lower_priority() {
    // SAFETY: plain system calls on this thread's own id; no memory is shared.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "notification thread keeps its priority");
    }
}
