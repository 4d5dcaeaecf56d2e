//! `cargo xtask demo --portal` as a person uses it: the demo binary keeps its lab running and
//! prints a loopback URL, the CA, a one-time sign-in link and an SSH command; a Chromium on
//! this host (not in the lab) signs in with the link through the loopback forwarder, requests
//! SSH with My IP, and the printed SSH command then works; SIGINT removes everything
//! (namespaces, processes, pins). (The full demo is not run here: it takes over a minute.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jitgate_browser::{Browser, BrowserOptions};
use jitgate_tests::agent::bin;
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::require_root;

/// The running demo; interrupted (then killed, if it does not end) when the test ends.
struct Demo {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    out: Vec<String>,
}

impl Demo {
    fn start() -> Demo {
        let mut child = Command::new(bin("jitgate-demo"))
            .arg("--portal")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("jitgate-demo --portal");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Demo {
            child: Some(child),
            lines,
            out: vec![],
        }
    }

    /// Reads output until a line starts with `prefix`.
    fn until(&mut self, prefix: &str, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let found = l.starts_with(prefix);
                    self.out.push(l);
                    if found {
                        return;
                    }
                }
                Err(e) => panic!(
                    "no line {prefix:?} within {limit:?} ({e}); the demo said:\n{}",
                    self.out.join("\n")
                ),
            }
        }
    }

    /// The value of the line `key:  value`.
    fn value(&self, key: &str) -> String {
        self.out
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{}", self.out.join("\n")))
    }

    /// The words of the output that start with `prefix`, without trailing punctuation.
    fn words(&self, prefix: &str) -> Vec<String> {
        let mut w: Vec<String> = self
            .out
            .iter()
            .flat_map(|l| l.split_whitespace())
            .filter(|w| w.starts_with(prefix))
            .map(|w| w.trim_end_matches([')', ';', ',']).to_string())
            .collect();
        w.sort();
        w.dedup();
        w
    }

    /// SIGINT, as Ctrl-C; the exit status.
    fn interrupt(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.out.push(l);
                }
                return st;
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "the demo did not end within {limit:?} of SIGINT:\n{}",
                    self.out.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child: it removes its lab on SIGINT.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let end = Instant::now() + Duration::from_secs(60);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
            eprintln!(
                "--- jitgate-demo --portal said ---\n{}",
                self.out.join("\n")
            );
        }
    }
}

/// The processes in network namespace `ns`.
fn pids_in(ns: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Runs the SSH command the demo printed, with `true` as the remote command (a refused
/// connection is a dropped SYN: it ends at the connect timeout).
fn printed_ssh_works(cmd: &str, connect_timeout: u32) -> bool {
    Command::new("timeout")
        .args(["20", "sh", "-c"])
        .arg(format!(
            "{cmd} -o BatchMode=yes -o ConnectTimeout={connect_timeout} true"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn demo_portal_serves_this_hosts_loopback_until_sigint_then_removes_everything() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let mut demo = Demo::start();
    demo.until("waiting;", Duration::from_secs(120));
    let setup = t0.elapsed();
    let portal = demo.value("portal");
    let ca = PathBuf::from(demo.value("ca"));
    let link = demo.value("sign-in link");
    assert!(portal.starts_with("https://127.0.0.1:"), "{portal}");
    let origin = portal.trim_end_matches('/').to_string();
    assert!(
        link.starts_with(&format!("{origin}/auth/link?t=")),
        "{link}"
    );
    let namespaces: Vec<String> = demo
        .words("jgws")
        .into_iter()
        .chain(demo.words("jgv"))
        .collect();
    assert_eq!(namespaces.len(), 3, "{namespaces:?}");
    for ns in &namespaces {
        assert!(Fleet::ns_path(ns).exists(), "{ns}");
    }
    let pins = demo.words(jitgate_tests::TEST_PIN_ROOT);
    assert_eq!(pins.len(), 1, "{pins:?}");
    let pins = PathBuf::from(&pins[0]);
    assert!(pins.exists(), "{}", pins.display());
    let ssh = demo
        .out
        .iter()
        .skip_while(|l| !l.starts_with("ssh once granted"))
        .nth(1)
        .map(|l| l.trim().to_string())
        .unwrap();
    assert!(ssh.starts_with("ip netns exec jgws"), "{ssh}");
    assert!(!printed_ssh_works(&ssh, 1), "SSH works before any request");

    // The loopback URL, checked against the printed CA (as curl --cacert does).
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(&portal).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());

    // A browser on this host (not in the lab) signs in with the printed link: its Origin is
    // the loopback URL, which is the controller's public_url.
    let b = Browser::start(
        BrowserOptions::new("demo_portal_loopback")
            .trust(ca.with_file_name("server.crt"))
            .check_headers_of(&origin),
    )
    .await
    .unwrap();
    b.goto(&link).await.unwrap();
    b.wait_for_text("This link signs you in as link:alice")
        .await
        .unwrap();
    b.click_button("Sign in").await.unwrap();
    b.wait_for_url(&format!("{origin}/jit")).await.unwrap();
    b.wait_for_text("Configured (1)").await.unwrap();
    let text = b.text().await.unwrap();
    assert!(text.contains("Not configured (1)"), "{text}");
    // What the server sees: the forwarder connects from the workstation namespace.
    let seen = b.find("#my-address").await.unwrap().text().await.unwrap();
    assert_eq!(seen, WS_V4);
    b.checkpoint("jit").await;

    // Request SSH with My IP: the printed command works from the workstation namespace.
    b.click_link("Request access").await.unwrap();
    b.wait_for_text("Ports of vm-01").await.unwrap();
    let port = b
        .find("input[name=port][value=\"vm-01|22\"]")
        .await
        .unwrap();
    if !port.is_selected().await.unwrap() {
        port.click().await.unwrap();
    }
    b.click("#duration option[value=PT1H]").await.unwrap();
    b.fill("#justification", "trying the demo").await.unwrap();
    b.click_button("Open ports").await.unwrap();
    b.wait_for_url(&format!("{origin}/requests/"))
        .await
        .unwrap();
    b.wait_for_text("Status: Applied").await.unwrap();
    b.checkpoint("applied").await;
    assert!(
        printed_ssh_works(&ssh, 10),
        "the printed SSH command after Applied"
    );
    b.close().await.unwrap();

    // Ctrl-C: everything the lab made is gone.
    let pids: Vec<u32> = namespaces.iter().flat_map(|ns| pids_in(ns)).collect();
    assert!(pids.len() >= 3, "controller, agent, sshd: {pids:?}");
    let st = demo.interrupt(Duration::from_secs(60));
    assert!(st.success(), "{st}:\n{}", demo.out.join("\n"));
    assert!(
        demo.out.iter().any(|l| l.starts_with("cleaned up:")),
        "{}",
        demo.out.join("\n")
    );
    for ns in &namespaces {
        assert!(!Fleet::ns_path(ns).exists(), "namespace {ns} left");
    }
    assert!(!Path::new(&pins).exists(), "pins left: {}", pins.display());
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    eprintln!(
        "demo --portal: ready in {setup:?}, whole test {:?}",
        t0.elapsed()
    );
}
