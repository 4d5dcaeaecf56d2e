//! `jit notify`: sinks and secrets managed from the command line against a real controller.
//! The sink's URL is in a documentation range the controller's file allows; nothing is
//! ever sent there (no event the sink wants happens, and no `test` is run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use common::{Env, Out};
use jitgate_api::Role;
use tokio::io::AsyncWriteExt;

async fn with_stdin(env: &Env, token: &str, args: &[&str], input: &[u8]) -> Out {
    let mut cmd = env.command(token, args);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let o = child.wait_with_output().await.unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_commands_manage_sinks_and_secrets() {
    let env = Env::with_config(|c, dir| {
        c.notify.allow_networks = vec!["198.51.100.0/24".into()];
        c.notify.system_roots = false;
        c.notify.ca_files = vec![dir.ca_cert()];
    })
    .await;
    let admin = env.admin.clone();

    // The secret comes from standard input (never argv); one trailing newline dropped.
    let o = with_stdin(
        &env,
        &admin,
        &["notify", "secret", "set", "hook"],
        b"s3cret-value\n",
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let stored = std::fs::read(env.dir.notify_secrets().join("hook")).unwrap();
    assert_eq!(stored, b"s3cret-value");
    let o = env
        .jit(&admin, &["--json", "notify", "secret", "list"])
        .await;
    assert_eq!(o.json(), serde_json::json!(["hook"]), "{}", o.stdout);
    let o = with_stdin(&env, &admin, &["notify", "secret", "set", "empty"], b"\n").await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("1 byte"), "{}", o.stderr);

    let url = "https://198.51.100.5/T000/SECRETPATH";
    let add = [
        "notify",
        "add",
        "ops",
        "--format",
        "webhook",
        "--endpoint",
        url,
        "--secret",
        "hook",
        "--events",
        "access.ending_soon",
        "--scope",
        "rg:prod",
    ];
    let o = env.jit(&admin, &add).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("ops") && !o.stdout.contains("SECRETPATH"),
        "{}",
        o.stdout
    );
    let o = env.jit(&admin, &add).await;
    assert_eq!(o.code, 7, "a second sink of that name: {}", o.stderr);
    assert!(o.stderr.contains("SinkExists"), "{}", o.stderr);
    let o = env.jit(&admin, &["notify", "list"]).await;
    assert!(
        o.stdout.contains("rg:prod") && o.stdout.contains("access.ending_soon"),
        "{}",
        o.stdout
    );
    assert!(!o.stdout.contains("SECRETPATH"), "{}", o.stdout);
    let o = env.jit(&admin, &["--json", "notify", "list"]).await;
    assert_eq!(o.json()[0]["sink"]["name"], "ops", "{}", o.stdout);

    // Refused before anything is stored: loopback, missing target, unknown secret.
    for args in [
        vec![
            "notify",
            "add",
            "lo",
            "--format",
            "webhook",
            "--endpoint",
            "https://127.0.0.1/x",
            "--secret",
            "hook",
        ],
        vec![
            "notify",
            "add",
            "nosecret",
            "--format",
            "webhook",
            "--endpoint",
            url,
            "--secret",
            "nope",
        ],
    ] {
        let o = env.jit(&admin, &args).await;
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains("BlockedAddress") || o.stderr.contains("InvalidSink"),
            "{}",
            o.stderr
        );
    }
    let o = env
        .jit(&admin, &["notify", "add", "x", "--format", "webhook"])
        .await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("--endpoint"), "{}", o.stderr);

    // A requester may not look.
    let req = env.token("req", Role::Requester, "*").await;
    let o = env.jit(&req, &["notify", "list"]).await;
    assert_eq!(o.code, 5, "{}", o.stderr);

    let o = env.jit(&admin, &["--json", "notify", "status"]).await;
    let s = o.json();
    assert_eq!(s[0]["name"], "ops", "{s}");
    assert_eq!(s[0]["queued"], 0, "{s}");
    assert_eq!(s[0]["inFlight"], 0, "{s}");
    let o = env.jit(&admin, &["notify", "status"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let header = o.stdout.lines().next().unwrap_or("");
    for c in [
        "SINK",
        "QUEUED",
        "IN FLIGHT",
        "OLDEST WAITING",
        "LAST DELIVERED",
        "LAST FAILURE",
    ] {
        assert!(header.contains(c), "{c} missing: {}", o.stdout);
    }
    let row: Vec<&str> = o
        .stdout
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // ops, queued, retrying, in flight, delivered, dead, then "-" for the three times.
    assert_eq!(
        row,
        ["ops", "0", "0", "0", "0", "0", "-", "-", "-"],
        "{}",
        o.stdout
    );
    let o = env.jit(&admin, &["notify", "retry"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("0 dead deliveries"), "{}", o.stdout);

    let o = env.jit(&admin, &["notify", "remove", "ops"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = env.jit(&admin, &["notify", "list"]).await;
    assert!(o.stdout.contains("no notification sinks"), "{}", o.stdout);
    let o = env.jit(&admin, &["notify", "remove", "ops"]).await;
    assert_eq!(o.code, 6, "{}", o.stderr);
}
