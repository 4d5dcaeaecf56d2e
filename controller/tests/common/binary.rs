//! The real `jit-controller` binary run on a harness's state directory (administration
//! commands: backup, restore, prune), and empty copies of a state directory to restore into.

use serde_json::Value;

use super::Harness;

/// Runs `jit-controller --state-dir DIR ARGS --json` without blocking the runtime that serves
/// the in-process controller: (success, stdout as JSON or Null, stderr).
pub async fn controller_json(dir: &std::path::Path, args: &[&str]) -> (bool, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .arg("--json")
        .env_remove("JIT_LOG")
        .env_remove("JIT_LOG_FORMAT")
        .output()
        .await
        .expect("run jit-controller");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of `h`'s state directory (keys, certificates, controller.toml) under `into` with an
/// empty database: no SQLite file, or a new PostgreSQL database in its controller.toml.
pub async fn empty_copy(h: &Harness, into: &std::path::Path) -> std::path::PathBuf {
    let dir = into.join("state");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&h.dir.0)
        .arg(&dir)
        .status()
        .expect("cp");
    assert!(st.success());
    let config = dir.join("controller.toml");
    match &h.cfg.database_url {
        None => {
            for e in std::fs::read_dir(&dir).expect("read_dir") {
                let p = e.expect("entry").path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("jit.db") || name.starts_with("controller.db") {
                    std::fs::remove_file(&p).expect("remove the database file");
                }
            }
        }
        Some(old) => {
            let fresh = super::fresh_postgres_database().await;
            let toml = std::fs::read_to_string(&config).expect("config");
            assert!(toml.contains(old.as_str()), "{toml}");
            std::fs::write(&config, toml.replace(old.as_str(), &fresh)).expect("write config");
        }
    }
    dir
}
