//! Ctrl-C and SIGTERM: the demo notices, stops what it is doing, and its drops remove the lab.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by the signal handler, which may do nothing else (async-signal safety).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM; a panic after one (a child the terminal's Ctrl-C also ended)
/// says so instead of printing a confusing message, and the lab is still removed by unwinding.
pub fn install() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stopped() {
            eprintln!("interrupted; removing the lab");
        } else {
            default(info);
        }
    }));
}

pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Why the demo did not reach its end.
#[derive(Debug)]
pub enum Outcome {
    /// Ctrl-C or SIGTERM.
    Stopped,
    Failed(String),
}

pub type Step<T = ()> = Result<T, Outcome>;

pub fn fail(e: impl Display) -> Outcome {
    Outcome::Failed(e.to_string())
}

/// Err(Stopped) once a signal came.
pub fn check() -> Step {
    if stopped() {
        Err(Outcome::Stopped)
    } else {
        Ok(())
    }
}

/// Sleeps, waking early on a signal.
pub fn nap(d: Duration) -> Step {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// Resolves when a signal came.
pub async fn signalled() {
    while !stopped() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `f` until it ends or a signal comes (then `f` is dropped: a browser it holds is
/// killed).
pub async fn or_stop<T>(f: impl Future<Output = Step<T>>) -> Step<T> {
    tokio::select! {
        r = f => r,
        _ = signalled() => Err(Outcome::Stopped),
    }
}
