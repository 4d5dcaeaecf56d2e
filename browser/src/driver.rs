//! The chromedriver process (which starts Chromium) in a process group of its own, here or
//! inside a network namespace. Killed as a group on drop, and by a watchdog when the test
//! process dies without dropping it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::BrowserError;
use crate::netns::Forwarder;

/// How long chromedriver may take to say it listens on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a start is tried again when chromedriver lost the race for its port: given
/// `--port=0`, it takes a free IPv6 port and then exits if the same port is taken on IPv4
/// ("IPv4 port not available"), which happens now and then while other tests listen.
const START_ATTEMPTS: usize = 5;
/// How long the killed group may take to be gone before the profile is removed anyway.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// Kills the process group `$1` and removes `$2` once the test process has gone: `cat`
/// returns when the pipe's write end, held only by the test process, closes. A watchdog that
/// the harness ends itself (killed before the pipe closes) never gets that far.
const WATCHDOG: &str = "cat >/dev/null 2>&1\nkill -9 -\"$1\" 2>/dev/null\nrm -rf \"$2\"\n";

/// chromedriver: `JIT_CHROMEDRIVER`, else Debian's.
pub(crate) fn chromedriver_path() -> PathBuf {
    std::env::var_os("JIT_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

/// Chromium: `JIT_CHROMIUM`, else Debian's binary itself (not the /usr/bin/chromium script,
/// which adds flags, extensions and API keys of its own).
pub(crate) fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("JIT_CHROMIUM") {
        return PathBuf::from(p);
    }
    let direct = Path::new("/usr/lib/chromium/chromium");
    if direct.exists() {
        direct.to_path_buf()
    } else {
        PathBuf::from("/usr/bin/chromium")
    }
}

pub(crate) struct Driver {
    child: Child,
    pub(crate) pgid: Pid,
    watchdog: Option<(Child, ChildStdin)>,
    /// chromedriver's base URL as this process reaches it.
    pub(crate) url: String,
    forward: Option<Forwarder>,
    out: PathBuf,
    /// The profile (`profile/`) and chromedriver's output; removed last.
    dir: tempfile::TempDir,
}

/// Why one start failed: the port race is worth another try, nothing else is.
enum StartError {
    PortTaken(BrowserError),
    Other(BrowserError),
}

impl From<BrowserError> for StartError {
    fn from(e: BrowserError) -> Self {
        StartError::Other(e)
    }
}

impl Driver {
    pub(crate) async fn start(netns: Option<&Path>) -> Result<Driver, BrowserError> {
        let mut attempt = 1;
        loop {
            match Driver::start_once(netns).await {
                Ok(d) => return Ok(d),
                Err(StartError::PortTaken(e)) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "chromedriver lost its port (attempt {attempt}); starting it again: {}",
                        e.0
                    );
                    attempt += 1;
                }
                Err(StartError::PortTaken(e) | StartError::Other(e)) => return Err(e),
            }
        }
    }

    async fn start_once(netns: Option<&Path>) -> Result<Driver, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("jitgate-browser-")
            .tempdir()
            .map_err(|e| BrowserError::new("temporary directory", e))?;
        let out = dir.path().join("chromedriver.out");
        let out_file = File::create(&out).map_err(|e| BrowserError::new(out.display(), e))?;
        let err_file = out_file
            .try_clone()
            .map_err(|e| BrowserError::new(out.display(), e))?;
        let driver = chromedriver_path();
        let mut cmd = Command::new(&driver);
        cmd.args(["--port=0", "--log-level=WARNING"])
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_file))
            .stderr(Stdio::from(err_file))
            .current_dir(dir.path())
            // A group of its own, which the Chromium processes it starts stay in; also out of
            // the terminal's group, so Ctrl-C reaches the test, which then cleans up.
            .process_group(0);
        let ns_file = match netns {
            Some(ns) => Some(File::open(ns).map_err(|e| BrowserError::new(ns.display(), e))?),
            None => None,
        };
        if let Some(f) = &ns_file {
            let fd = f.as_raw_fd();
            // SAFETY: setns(2) is async-signal-safe; the fd stays open until after spawn.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|e| {
            BrowserError::new(
                format!(
                    "starting {} (`cargo xtask setup` installs chromium-driver)",
                    driver.display()
                ),
                e,
            )
        })?;
        drop(ns_file);
        let pgid = Pid::from_raw(child.id() as i32);
        let mut d = Driver {
            child,
            pgid,
            watchdog: None,
            url: String::new(),
            forward: None,
            out,
            dir,
        };
        // From here on, Drop (or the watchdog) cleans up whatever happens next.
        d.watchdog = Some(spawn_watchdog(pgid, d.dir.path())?);
        let port = d.wait_port().await?;
        let port = match netns {
            Some(ns) => {
                let f = Forwarder::start(ns, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                    .await?;
                let local = f.port;
                d.forward = Some(f);
                local
            }
            None => port,
        };
        d.url = format!("http://127.0.0.1:{port}/");
        Ok(d)
    }

    /// The profile directory Chromium is given.
    pub(crate) fn profile(&self) -> PathBuf {
        self.dir.path().join("profile")
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The port chromedriver reports ("... started successfully on port N.").
    async fn wait_port(&mut self) -> Result<u16, StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = self.output();
            if let Some(port) = text
                .lines()
                .filter_map(|l| l.split("started successfully on port ").nth(1))
                .find_map(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
            {
                return Ok(port);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let e = BrowserError(format!(
                    "chromedriver exited ({status}) before it listened:\n{text}"
                ));
                return Err(if text.contains("port not available") {
                    StartError::PortTaken(e)
                } else {
                    StartError::Other(e)
                });
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(BrowserError(format!(
                    "chromedriver did not listen within {START_TIMEOUT:?}:\n{text}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The processes of the group (chromedriver and Chromium's): pid and command name.
    pub(crate) fn processes(&self) -> Vec<(u32, String)> {
        let want = self.pgid.as_raw().to_string();
        let mut out = vec![];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            if rest.split_whitespace().nth(2) == Some(want.as_str()) {
                let comm = head.split_once(" (").map(|(_, c)| c).unwrap_or_default();
                out.push((pid, comm.to_string()));
            }
        }
        out
    }

    /// chromedriver's own log (warnings and errors), for a failure message.
    pub(crate) fn log_text(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        format!("{}{log}", self.output())
    }
}

fn spawn_watchdog(pgid: Pid, dir: &Path) -> Result<(Child, ChildStdin), BrowserError> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("jitgate-browser-watchdog")
        .arg(pgid.as_raw().to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .map_err(|e| BrowserError::new("starting the browser watchdog", e))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| BrowserError("the browser watchdog has no stdin".into()))?;
    Ok((child, stdin))
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.forward = None;
        // Only the group this harness started: chromedriver and the Chromium it launched.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let _ = self.child.wait();
        let deadline = Instant::now() + GONE_TIMEOUT;
        while killpg(self.pgid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some((mut w, stdin)) = self.watchdog.take() {
            // Killed before its pipe closes: it never signals a group id that may be reused.
            let _ = w.kill();
            let _ = w.wait();
            drop(stdin);
        }
        // The TempDir removes the profile after this.
    }
}
