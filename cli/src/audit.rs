//! `jit audit verify [--offline FILE]`, `jit audit export FILE`, `jit audit checkpoint`: the
//! activity log's hash chain and signed checkpoints (docs/controller.md, "Activity log").

use std::path::{Path, PathBuf};

use jitgate_proto::audit::{Export, parse_public_key};
use serde_json::Value;

use crate::{Client, Fail, R, exit, print_json, s};

/// Prints a verification report (from the controller or offline) and fails with
/// `VERIFY_FAILED` if it is not ok.
pub fn report(v: &Value, json: bool, what: &str) -> R<()> {
    if json {
        print_json(v);
    } else if v["ok"] == true {
        let covered = match v["coveredSeq"].as_i64() {
            Some(n) if n > 0 => format!("entries 1..{n} covered"),
            _ => "no entry covered yet".to_string(),
        };
        println!(
            "{what} OK: {} entries, head {}; {} signed checkpoints (key {}), {covered}, {} not yet covered",
            s(&v["entries"]),
            s(&v["headHash"]),
            s(&v["checkpoints"]),
            s(&v["keyId"]),
            s(&v["uncovered"])
        );
    } else {
        let cp = match &v["badCheckpointSeq"] {
            Value::Null => String::new(),
            n => format!(" (checkpoint at entry {n})"),
        };
        println!(
            "{what} FAILED verification at entry {}{cp}: {}",
            s(&v["firstBadSeq"]),
            s(&v["problem"])
        );
    }
    if v["ok"] != true {
        return Err(Fail::new(
            exit::VERIFY_FAILED,
            format!("{what} verification failed"),
        ));
    }
    Ok(())
}

/// Verifies an export file from its content alone (no controller). With `key`, only that
/// public key (SPKI PEM, the controller's `keys/grant-signing.pub`) is trusted.
pub fn verify_offline(file: &Path, key: Option<&Path>, json: bool) -> R<()> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Fail::new(exit::ERROR, format!("{}: {e}", p.display())))
    };
    let bad = |msg: String| Fail::new(exit::VERIFY_FAILED, format!("{}: {msg}", file.display()));
    let x: Export = serde_json::from_str(&read(file)?)
        .map_err(|e| bad(format!("not an activity log export: {e}")))?;
    let pinned = key
        .map(|k| {
            parse_public_key(&read(k)?)
                .map_err(|e| Fail::new(exit::USAGE, format!("{}: {e}", k.display())))
        })
        .transpose()?;
    let r = x.verify(pinned.as_ref()).map_err(bad)?;
    let v = serde_json::to_value(&r).map_err(|e| Fail::new(exit::ERROR, e.to_string()))?;
    report(&v, json, "activity log export")
}

/// Writes the controller's export bundle to `file`.
pub async fn export(c: &Client, file: &PathBuf, json: bool) -> R<()> {
    let v = c.get("/activityLog/export").await?;
    let text = serde_json::to_string(&v).map_err(|e| Fail::new(exit::ERROR, e.to_string()))?;
    std::fs::write(file, text)
        .map_err(|e| Fail::new(exit::ERROR, format!("{}: {e}", file.display())))?;
    let n = v["entries"].as_array().map_or(0, Vec::len);
    let k = v["checkpoints"].as_array().map_or(0, Vec::len);
    if json {
        print_json(
            &serde_json::json!({"file": file, "entries": n, "checkpoints": k, "keyId": v["keyId"]}),
        );
    } else {
        println!(
            "wrote {n} entries and {k} checkpoints (key {}) to {}",
            s(&v["keyId"]),
            file.display()
        );
    }
    Ok(())
}

/// Signs the chain head now.
pub async fn checkpoint(c: &Client, json: bool) -> R<()> {
    let v = c
        .call(reqwest::Method::POST, "/activityLog/checkpoints", None)
        .await?;
    if json {
        print_json(&v);
    } else {
        println!(
            "checkpoint at entry {}: {} (key {})",
            s(&v["seq"]),
            s(&v["hash"]),
            s(&v["keyId"])
        );
    }
    Ok(())
}

/// `jit audit --agent --vm VM verify`: the VM's agents' delivered records and their signed
/// checkpoints, verified at the controller.
pub async fn agent_verify(c: &Client, vm: &str, json: bool) -> R<()> {
    let v = c
        .get(&format!(
            "/virtualMachines/{}/agentAudit/verify",
            crate::urlencode(vm)
        ))
        .await?;
    if json {
        print_json(&v);
    }
    for a in v["agents"].as_array().into_iter().flatten() {
        if json {
            break;
        }
        if a["ok"] == true {
            println!(
                "agent {}: OK, {} records (seq {}..{}), {} signed checkpoints, covered up to seq {}, {} not yet covered",
                s(&a["agentId"]),
                s(&a["records"]),
                s(&a["firstSeq"]),
                s(&a["lastSeq"]),
                s(&a["checkpoints"]),
                s(&a["coveredSeq"]),
                s(&a["uncovered"])
            );
        } else {
            println!(
                "agent {}: FAILED verification at record {}: {}",
                s(&a["agentId"]),
                s(&a["firstBadSeq"]),
                s(&a["problem"])
            );
        }
    }
    if v["ok"] != true {
        return Err(Fail::new(
            exit::VERIFY_FAILED,
            format!("agent audit verification failed for {vm}"),
        ));
    }
    Ok(())
}
