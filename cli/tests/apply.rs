//! `jit apply` and `jit export` through the real binary against a real controller: the
//! export applies as "no changes", a change is planned, dry-run and applied with its fields
//! shown terminal-safe, `--json` gives the plan, and a bad file is refused with its line and
//! column before anything is sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Env;

fn write(e: &Env, name: &str, text: &str) -> String {
    let p = e._tmp.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_apply_round_trip_plan_and_bad_files() {
    let e = Env::new().await;
    let admin = e.admin.clone();

    // What was exported applies as "no changes".
    let o = e.jit(&admin, &["export"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("[[vms]]") && o.stdout.contains("name = \"web1\""),
        "{}",
        o.stdout
    );
    let f = write(&e, "jitgate.toml", &o.stdout);
    let o = e.jit(&admin, &["apply", "-f", &f]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "no changes");

    // A new policy, and an owner with a terminal escape in it: planned, shown escaped.
    let changed = format!(
        "{}\n[[policies]]\nvm = \"web1\"\n[[policies.ports]]\nnumber = 22\nprotocol = \"TCP\"\n\
         allowed_source_address_prefix = \"203.0.113.0/24\"\nmax_request_access_duration = \"PT1H\"\n",
        std::fs::read_to_string(&f)
            .unwrap()
            .replace("ops@example.com", "ops\\u001b[2J@example.com")
    );
    let f2 = write(&e, "changed.toml", &changed);
    let dry = e.jit(&admin, &["apply", "-f", &f2, "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    for line in [
        "~ change resourceGroup prod",
        "owner: ops@example.com -> ops\\x1b[2J@example.com",
        "+ create policy vm:web1",
        "ports[22/TCP].max_request_access_duration: PT1H",
        "dry run: nothing changed",
    ] {
        assert!(dry.stdout.contains(line), "{line}: {}", dry.stdout);
    }
    assert!(
        !dry.stdout.contains('\u{1b}'),
        "a raw escape reached the terminal"
    );
    let still = e.jit(&admin, &["apply", "-f", &f]).await;
    assert_eq!(
        still.stdout.trim(),
        "no changes",
        "the dry run changed something"
    );

    let o = e.jit(&admin, &["apply", "-f", &f2, "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let plan = o.json();
    assert_eq!(plan["applied"], true);
    assert_eq!(plan["changes"].as_array().unwrap().len(), 2, "{plan}");
    let o = e.jit(&admin, &["apply", "-f", &f2]).await;
    assert_eq!(o.stdout.trim(), "no changes", "{}", o.stdout);

    // Bad files: refused with FILE:LINE:COLUMN, exit 2, nothing sent (a controller that does
    // not exist is never asked).
    let unknown = write(
        &e,
        "unknown.toml",
        "[[vms]]\nname = \"web9\"\ncolour = \"red\"\nresource_group = \"prod\"\n",
    );
    let wrong_type = write(
        &e,
        "type.toml",
        "[[policies]]\nvm = \"web1\"\n[[policies.ports]]\nnumber = \"22\"\nprotocol = \"TCP\"\n\
         max_request_access_duration = \"PT1H\"\n",
    );
    let camel = write(
        &e,
        "camel.toml",
        "[[vms]]\nname = \"a\"\nresourceGroup = \"prod\"\n",
    );
    for (file, place, words) in [
        (&unknown, ":3:1: ", "unknown field `colour`"),
        (&wrong_type, ":4:10: ", "invalid type"),
        (&camel, ":3:1: ", "unknown field `resourceGroup`"),
    ] {
        let o = e
            .jit(
                &admin,
                &["--url", "https://127.0.0.1:9", "apply", "-f", file],
            )
            .await;
        assert_eq!(o.code, 2, "{file}: {}", o.stderr);
        assert!(o.stderr.contains(&format!("{file}{place}")), "{}", o.stderr);
        assert!(o.stderr.contains(words), "{}", o.stderr);
    }
    let o = e.jit(&admin, &["apply", "-f", &f2]).await;
    assert_eq!(o.stdout.trim(), "no changes");
}
