//! `jit connections VM` and `jit audit --agent --vm VM`: what a VM's agent saw, as the
//! controller stored it.

use clap::Args;

use crate::{AuditArgs, Client, R, print_json, s, urlencode};

#[derive(Args)]
pub struct ConnectionsArgs {
    /// The VM.
    vm: String,
    /// Also list refused attempts (sources without an active grant).
    #[arg(long)]
    denied: bool,
    /// From this time (ISO 8601, inclusive).
    #[arg(long)]
    since: Option<String>,
    /// Up to this time (ISO 8601, exclusive).
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Export as CSV.
    #[arg(long)]
    csv: bool,
}

/// `limit=N` and each given `key=value`, URL-encoded.
pub fn query(limit: u32, pairs: &[(&str, &Option<String>)]) -> String {
    let mut q = vec![format!("limit={limit}")];
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push(format!("{k}={}", urlencode(v)));
        }
    }
    q.join("&")
}

pub async fn connections(c: &Client, a: &ConnectionsArgs, json: bool) -> R<()> {
    let mut q = query(a.limit, &[("from", &a.since), ("to", &a.until)]);
    if a.denied {
        q.push_str("&denied=true");
    }
    let path = format!("/virtualMachines/{}/connections?{q}", urlencode(&a.vm));
    if a.csv {
        print!("{}", c.get_text(&format!("{path}&format=csv")).await?);
        return Ok(());
    }
    let v = c.get(&path).await?;
    if json {
        print_json(&v["value"]);
        return Ok(());
    }
    println!(
        "{:<24} {:<8} {:<40} {:<9} {:<20} {:<36} JUSTIFICATION / REASON",
        "TIME (UTC)", "OUTCOME", "SOURCE", "PORT", "REQUESTOR", "REQUEST"
    );
    for x in v["value"].as_array().into_iter().flatten() {
        let request = match (x["requestId"].as_str(), x["grantOrigin"].as_str()) {
            (Some(r), _) => r.to_string(),
            (None, Some(o)) => format!("({o} grant)"),
            (None, None) => "-".to_string(),
        };
        let why = if x["outcome"] == "denied" {
            s(&x["reason"])
        } else {
            s(&x["justification"])
        };
        println!(
            "{:<24} {:<8} {:<40} {:<9} {:<20} {:<36} {}",
            s(&x["timeUtc"]),
            s(&x["outcome"]),
            s(&x["source"]),
            format!("{}/{}", s(&x["port"]), s(&x["protocol"])),
            s(&x["requestor"]),
            request,
            why
        );
    }
    Ok(())
}

pub async fn agent_audit(c: &Client, a: &AuditArgs, json: bool) -> R<()> {
    let vm = a.vm.as_deref().unwrap_or_default();
    let q = query(
        a.limit,
        &[("from", &a.since), ("to", &a.until), ("kind", &a.kind)],
    );
    let v = c
        .get(&format!(
            "/virtualMachines/{}/agentAudit?{q}",
            urlencode(vm)
        ))
        .await?;
    if json {
        print_json(&v["value"]);
        return Ok(());
    }
    println!(
        "{:<6} {:<32} {:<22} {:<28} {:<28} DETAIL",
        "SEQ", "TIME (agent clock)", "KIND", "ACTOR", "SOURCE"
    );
    for x in v["value"].as_array().into_iter().flatten() {
        let r = &x["record"];
        let detail: Vec<String> = ["protocol", "port", "grantId", "reason"]
            .iter()
            .filter(|k| !r[**k].is_null())
            .map(|k| format!("{k}={}", s(&r[*k])))
            .collect();
        println!(
            "{:<6} {:<32} {:<22} {:<28} {:<28} {}",
            s(&r["seq"]),
            s(&r["time"]),
            s(&r["kind"]),
            s(&r["actor"]),
            s(&r["source"]),
            detail.join(" ")
        );
    }
    Ok(())
}
