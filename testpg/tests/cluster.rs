//! The harness against a real PostgreSQL: start, databases, stop/restart/crash, TLS with
//! verify-full, passwords, and cleanup after drop, panic, SIGKILL and process exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use jitgate_testpg::{Cluster, Error};
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a process runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file in `dir` (the cluster's, removed with it).
fn tempfile_in(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The uid a process runs as.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn databases_are_separate_and_drop_removes_server_and_files() {
    let t = Instant::now();
    let c = Cluster::start().unwrap();
    eprintln!("cluster ready in {:.2} s", t.elapsed().as_secs_f64());
    let pid = c.pid().unwrap();
    assert!(alive(pid));
    if nix::unistd::geteuid().is_root() {
        assert_ne!(uid_of(pid), 0, "the server must not run as root");
    }
    let dir = c.dir().to_path_buf();
    // No TCP listener: only the socket.
    assert_eq!(c.tcp_url("postgres"), None);
    assert!(c.socket_dir().join(".s.PGSQL.5432").exists());

    let t = Instant::now();
    let a = c.create_database().unwrap();
    let b = c.create_database().unwrap();
    eprintln!("two databases in {:.2} s", t.elapsed().as_secs_f64());
    assert_ne!(a.name, b.name);
    c.psql(&a.name, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .unwrap();
    assert_eq!(c.psql(&a.name, "SELECT x FROM t").unwrap().trim(), "42");
    let err = c.psql(&b.name, "SELECT x FROM t").unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    // A template copy carries the template's tables.
    let copy = c.create_database_from(&a.name).unwrap();
    assert_eq!(c.psql(&copy.name, "SELECT x FROM t").unwrap().trim(), "42");

    drop(c);
    assert!(!alive(pid), "server still running after drop");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn stop_start_restart_and_crash_keep_committed_data() {
    let c = Cluster::start().unwrap();
    let db = c.create_database().unwrap();
    c.psql(&db.name, "CREATE TABLE t (x int)").unwrap();
    c.psql(&db.name, "INSERT INTO t VALUES (1)").unwrap();
    let first = c.pid().unwrap();

    c.stop().unwrap();
    assert!(!c.is_running());
    assert!(!alive(first));
    assert!(
        c.psql(&db.name, "SELECT 1").is_err(),
        "stopped, yet answered"
    );
    c.start_again().unwrap();
    assert!(c.is_running());
    c.psql(&db.name, "INSERT INTO t VALUES (2)").unwrap();

    // A crash (immediate shutdown) right after a commit loses nothing.
    c.crash().unwrap();
    assert!(!c.is_running());
    c.start_again().unwrap();
    c.restart().unwrap();
    assert_eq!(
        c.psql(
            &db.name,
            "SELECT string_agg(x::text, ',' ORDER BY x) FROM t"
        )
        .unwrap()
        .trim(),
        "1,2"
    );
    // Same socket, same URL throughout.
    assert!(
        c.log()
            .contains("database system is ready to accept connections")
    );
}

#[test]
fn tls_verify_full_against_the_test_ca_and_nothing_else() {
    let c = Cluster::builder().tls().start().unwrap();
    let ca = c.ca_cert().unwrap();
    assert!(ca.is_file());
    let url = c.tcp_url("postgres").unwrap();
    assert!(url.contains("sslmode=verify-full"), "{url}");
    assert!(
        url.contains(&format!("sslrootcert={}", ca.display())),
        "{url}"
    );
    let psql = |url: &str| {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-d", url, "-c"])
            .arg("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    };
    let ok = psql(&url);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let row = String::from_utf8_lossy(&ok.stdout);
    assert!(row.trim().starts_with("t|TLS"), "{row}");

    // Another CA does not vouch for this server.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_pem = other.self_signed(&other_key).unwrap().pem();
    let other_ca = tempfile_in(c.dir(), "other-ca.crt", &other_pem);
    let wrong = url.replace(&ca.display().to_string(), &other_ca.display().to_string());
    let bad = psql(&wrong);
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("certificate verify failed"), "{msg}");

    // The wrong host name fails verify-full (the certificate names 127.0.0.1 and localhost).
    let port = c.port();
    let by_name = url.replace(&format!("127.0.0.1:{port}"), &format!("localhost:{port}"));
    assert!(
        psql(&by_name).status.success(),
        "localhost is in the certificate"
    );

    // Without TLS the server refuses TCP clients.
    let plain = format!("postgres://jitgate@127.0.0.1:{port}/postgres?sslmode=disable");
    let refused = psql(&plain);
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("no encryption"), "{msg}");
}

#[test]
fn password_authentication() {
    let c = Cluster::builder()
        .tcp()
        .password("s3cret-Pw")
        .start()
        .unwrap();
    let db = c.create_database().unwrap();
    assert!(db.url.contains("jitgate:s3cret-Pw@"), "{}", db.url);
    assert!(c.psql(&db.name, "SELECT 1").is_ok());
    let url = c.tcp_url(&db.name).unwrap();
    let wrong = url.replace("s3cret-Pw", "guess");
    let out = Command::new("psql")
        .args(["-X", "-d", &wrong, "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let c = Cluster::start().unwrap();
        tx.send((c.dir().to_path_buf(), c.pid().unwrap())).unwrap();
        panic!("deliberate: the cluster must go while this panic unwinds");
    });
    assert!(r.is_err());
    let (dir, pid) = rx.recv().unwrap();
    assert!(!alive(pid));
    assert!(!dir.exists());
}

#[test]
fn shared_cluster_serves_concurrent_tests() {
    let a = Cluster::shared().unwrap();
    let b = Cluster::shared().unwrap();
    assert!(std::ptr::eq(a, b));
    let names: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| Cluster::shared().unwrap().create_database().unwrap().name))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unique: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
}

#[test]
fn bad_database_names_are_refused() {
    let c = Cluster::shared().unwrap();
    for bad in ["", "x; DROP DATABASE postgres", "a\"b", "white space"] {
        assert!(
            matches!(c.create_database_from(bad), Err(Error::Name(_))),
            "{bad:?}"
        );
    }
}

/// This file's test binary, running one test with the child role.
fn child(role: &str, test: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("JIT_TESTPG_CHILD", role)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `READY dir pid` from a child.
fn ready(c: &mut std::process::Child) -> (std::path::PathBuf, u32) {
    let out = c.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        // libtest prints `test NAME ... ` before the test's own output, on the same line.
        if let Some((_, rest)) = line.split_once("READY ") {
            let (dir, pid) = rest.rsplit_once(' ').unwrap();
            // Keep reading: a closed pipe would fail the child's next write.
            std::thread::spawn(move || lines.for_each(drop));
            return (dir.into(), pid.parse().unwrap());
        }
    }
    panic!("the child never became ready");
}

fn gone(dir: &Path, pid: u32) {
    wait_until("server stopped", Duration::from_secs(20), || !alive(pid));
    wait_until("directory removed", Duration::from_secs(20), || {
        !dir.exists()
    });
}

#[test]
fn a_killed_test_process_leaves_nothing_behind() {
    if std::env::var("JIT_TESTPG_CHILD").as_deref() == Ok("kill") {
        let c = Cluster::start().unwrap();
        println!("READY {} {}", c.dir().display(), c.pid().unwrap());
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let mut c = child("kill", "a_killed_test_process_leaves_nothing_behind");
    let (dir, pid) = ready(&mut c);
    assert!(alive(pid));
    c.kill().unwrap(); // SIGKILL: no destructor, no unwinding
    c.wait().unwrap();
    gone(&dir, pid);
}

#[test]
fn the_shared_cluster_goes_when_its_process_exits() {
    if std::env::var("JIT_TESTPG_CHILD").as_deref() == Ok("exit") {
        let c = Cluster::shared().unwrap();
        println!("READY {} {}", c.dir().display(), c.pid().unwrap());
        return;
    }
    let mut c = child("exit", "the_shared_cluster_goes_when_its_process_exits");
    let (dir, pid) = ready(&mut c);
    assert!(c.wait().unwrap().success());
    gone(&dir, pid);
}
