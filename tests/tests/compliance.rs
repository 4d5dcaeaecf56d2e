//! Compliance end to end: a fleet of real agents, real sshd and the real controller in
//! namespaces. One VM compliant, one whose sshd listens on 22 unprotected (and with an
//! interface the program is not attached to, and another tool's XDP program ahead of
//! jitgate's, which runs at tcx ingress behind it: reported per interface by the agent, shown
//! by `jit agents`, `jit vm show` and `jit-agent status`, and a `ProgramNotFirst` finding), one whose agent was stopped and enforcement
//! detached, one host with sshd and no agent (found by the probe as unmanaged). Then
//! remediation, and a VM added to an assigned group later. And the portal's compliance
//! dashboard in Chromium inside the workstation namespace, on a lab of its own.

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, Sshd, WS_V4};
use jitgate_tests::netns::ips;
use jitgate_tests::portal::{HOSTILE, admin_link, assert_nothing_injected, workstation_browser};
use jitgate_tests::{ok, require_root, wait_until};
use serde_json::Value;
use std::time::Duration;

fn json(ctl: &ControllerProc, ns: &str, a: &[&str]) -> Value {
    ctl.jit_json(ns, a)
}

fn result<'a>(report: &'a Value, resource: &str) -> &'a Value {
    report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["resource"] == resource)
        .unwrap_or_else(|| panic!("{resource} not in the report: {report:#}"))
}

fn codes(r: &Value) -> Vec<String> {
    r["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["code"].as_str().unwrap_or("").to_string())
        .collect()
}

fn finding<'a>(r: &'a Value, code: &str) -> &'a Value {
    r["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["code"] == code)
        .unwrap_or_else(|| panic!("no {code} finding: {r:#}"))
}

fn vm_status(ctl: &ControllerProc, ns: &str, vm: &str) -> Value {
    json(ctl, ns, &["vms", "--json"])
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == vm)
        .cloned()
        .unwrap_or(Value::Null)
}

/// vm-b added to group dev (which must exist), and prod's policy: SSH from the lab, up to
/// 3 hours. vm-b's enrollment token.
fn vm_b_in_dev_and_prod_policy(ctl: &ControllerProc, ws: &str, addr: std::net::IpAddr) -> String {
    let token = ctl.admin(&[
        "vm",
        "add",
        "vm-b",
        "--resource-group",
        "dev",
        "--address",
        &addr.to_string(),
    ])["enrollmentToken"]
        .as_str()
        .expect("token")
        .to_string();
    ok(
        ctl.jit(
            ws,
            &args(
                "policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 --max 3h",
            ),
        ),
        "policy set",
    );
    token
}

const CONFIG: &str = "[compliance]\n\
    scan_every_seconds = 0\n\
    probe_every_seconds = 0\n\
    offline_grace_seconds = 1\n\
    probe_ranges = [\"198.51.100.0/27\"]\n\
    probe_timeout_ms = 700\n\
    probe_concurrency = 32\n\
    probe_rate_per_second = 500\n";

#[test]
fn compliance_findings_grouping_remediation() {
    if !require_root() {
        return;
    }
    let mut fleet = Fleet::new(4).expect("fleet");
    let ws = fleet.ws.clone();
    let ctl = ControllerProc::start_with(&ws, WS_V4, CONFIG);
    let sshds: Vec<Sshd> = fleet
        .vms
        .iter()
        .map(|v| Sshd::start(&v.ns).expect("sshd"))
        .collect();
    let (a, b, c, d) = (&fleet.vms[0], &fleet.vms[1], &fleet.vms[2], &fleet.vms[3]);

    // vm-a and vm-c in prod (JIT policy on 22), vm-b in dev (no policy); d is not registered.
    let token_a = ctl.add_vm("vm-a", a.v4);
    let token_c = ctl.add_vm("vm-c", c.v4);
    ctl.admin(&["rg", "add", "dev", "--owner", "dev@example.net"]);
    let token_b = vm_b_in_dev_and_prod_policy(&ctl, &ws, b.v4);
    // vm-b: an interface with an address that the agent is not told to attach to.
    // (No dummy driver here: one end of a veth pair, its peer left down and unaddressed.)
    ips(&format!(
        "-n {} link add dummy0 type veth peer name dummy0p",
        b.ns
    ))
    .expect("dummy0");
    ips(&format!("-n {} addr add 203.0.113.5/32 dev dummy0", b.ns)).expect("dummy0 addr");
    ips(&format!("-n {} link set dummy0 up", b.ns)).expect("dummy0 up");

    // vm-b also has a UDP service on the RDP port, bound to the IPv6 wildcard.
    let _rdp_udp = jitgate_agent::netns::run_in(&Fleet::ns_path(&b.ns), || {
        std::net::UdpSocket::bind("[::]:3389")
    })
    .expect("netns")
    .expect("udp 3389 on vm-b");

    // vm-b: another tool's XDP program (not dispatcher-aware) already holds eth0's XDP hook,
    // so its agent enforces at tcx ingress, behind it: reported per interface, a finding.
    // Its maps are pinned in a private directory (removed at the end); dropping `other`
    // detaches it.
    let other_pins =
        std::path::PathBuf::from(jitgate_tests::TEST_PIN_ROOT).join(jitgate_tests::unique("other"));
    std::fs::create_dir_all(&other_pins).expect("pin dir");
    let _other_pins = jitgate_tests::PinGuard(other_pins.clone());
    let mut other = aya::EbpfLoader::new()
        .default_map_pin_directory(&other_pins)
        .load(jitgate_agent::dataplane::PROGRAM_OBJECT)
        .expect("load the other program");
    let floor: &mut aya::programs::Xdp = other
        .program_mut(jitgate_common::programs::FLOOR_PASS)
        .expect("floor program")
        .try_into()
        .expect("xdp");
    floor.load().expect("load floor");
    let other_id = floor.info().expect("info").id();
    jitgate_agent::netns::run_in(&Fleet::ns_path(&b.ns), || {
        floor
            .attach(&b.iface, aya::programs::XdpMode::Driver)
            .or_else(|_| floor.attach(&b.iface, aya::programs::XdpMode::Skb))
    })
    .expect("netns")
    .expect("attach the other XDP program on vm-b");

    let agent_a = AgentProc::start_enrolled(
        &a.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token_a,
    );
    let agent_b = AgentProc::start_enrolled(
        &b.ns,
        &args("--interface eth0 --protect 2222/tcp"),
        &ctl.api,
        &ctl.ca,
        &token_b,
    );
    let mut agent_c = AgentProc::start_enrolled(
        &c.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token_c,
    );

    // Heartbeats carry the status: vm-a and vm-c online, vm-b degraded (dummy0).
    assert!(
        wait_until(Duration::from_secs(30), || {
            vm_status(&ctl, &ws, "vm-a")["status"] == "online"
                && vm_status(&ctl, &ws, "vm-c")["status"] == "online"
                && vm_status(&ctl, &ws, "vm-b")["status"] == "degraded"
        }),
        "fleet status: {}",
        ok(ctl.jit(&ws, &args("vms --json")), "vms")
    );
    let vb = vm_status(&ctl, &ws, "vm-b");
    assert!(vb["problems"].to_string().contains("dummy0"), "{vb}");
    let agents = json(&ctl, &ws, &["agents", "--json"]);
    let ag_a = agents
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["virtualMachine"] == "vm-a")
        .expect("vm-a agent");
    assert!(
        ag_a["listening"].to_string().contains(":22"),
        "listening sockets reported: {ag_a}"
    );
    let offset = ag_a["clockOffsetMs"].as_i64().expect("clock offset");
    assert!(offset.abs() < 60_000, "same host clock, offset {offset} ms");
    // Where the programs run: vm-a's alone at its hook; vm-b's at tcx behind the other.
    let agent_of = |vm: &str| {
        json(&ctl, &ws, &["agents", "--json"])
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["virtualMachine"] == vm)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut ag_a = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            ag_a = agent_of("vm-a");
            ag_a["hooks"].as_array().is_some_and(|h| !h.is_empty())
        }),
        "vm-a's hook report: {ag_a:#}"
    );
    assert_eq!(ag_a["hooks"][0]["interface"], "eth0", "{ag_a:#}");
    assert_eq!(ag_a["hooks"][0]["position"], 0, "{ag_a:#}");
    assert_eq!(ag_a["hooks"][0]["ahead"], serde_json::json!([]), "{ag_a:#}");
    assert!(ag_a["hooks"][0].get("problem").is_none(), "{ag_a:#}");
    let mut ag_b = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            ag_b = agent_of("vm-b");
            ag_b["hooks"][0]["problem"] == "NotFirst"
        }),
        "vm-b's hook report: {ag_b:#}"
    );
    let hb = &ag_b["hooks"][0];
    assert_eq!(hb["interface"], "eth0", "{hb}");
    assert_eq!(hb["hook"], "tcx-ingress", "{hb}");
    assert_eq!(hb["mode"], "tcx", "{hb}");
    assert_eq!(hb["position"], 0, "{hb}");
    assert_eq!(hb["ahead"][0]["id"], other_id, "{hb}");
    assert_eq!(hb["ahead"][0]["hook"], "xdp", "{hb}");
    assert_eq!(hb["ahead"][0]["name"], "jitgate_floor", "{hb}");
    assert!(
        vm_status(&ctl, &ws, "vm-b")["problems"]
            .to_string()
            .contains("another program runs ahead of jitgate on eth0"),
        "{}",
        vm_status(&ctl, &ws, "vm-b")
    );
    let text = ok(ctl.jit(&ws, &args("agents")), "agents");
    assert!(
        text.contains("eth0: tcx-ingress (tcx), position 0 of ")
            && text.contains("PROBLEM: another program runs ahead of jitgate on eth0"),
        "{text}"
    );
    // `jit vm show`: the VM, its agent and where the program runs, from the same report
    // (`GET /virtualMachines/{vm}`, one query), as JSON and as text.
    let shown = json(&ctl, &ws, &["vm", "show", "vm-b", "--json"]);
    assert_eq!(shown["name"], "vm-b", "{shown:#}");
    let sa = &shown["agent"];
    assert_eq!(sa["connection"], "degraded", "{shown:#}");
    assert_eq!(sa["protocol"], jitgate_proto::PROTOCOL_LEVEL, "{shown:#}");
    assert_eq!(sa["hooks"], ag_b["hooks"], "{shown:#}");
    assert!(sa["lastReportTimeUtc"].is_string(), "{shown:#}");
    let text = ok(ctl.jit(&ws, &args("vm show vm-b")), "vm show");
    assert!(
        text.starts_with("VM vm-b (resource group ")
            && text.contains(": degraded, last heard ")
            && text.contains("dummy0 has an address (203.0.113.5) and no enforcement")
            && text.contains("tcx-ingress (tcx)")
            && text.contains(&format!("jitgate_floor (id {other_id}, xdp)"))
            && text.contains("NotFirst"),
        "{text}"
    );
    let missing = ctl.jit(&ws, &args("vm show vm-none"));
    assert!(!missing.status.success(), "{missing:?}");
    let local = agent_b.ok(&["status"]);
    assert!(
        local.contains("hook         tcx-ingress, position 0 of ")
            && local.contains(&format!("ahead        jitgate_floor (id {other_id}, xdp)")),
        "{local}"
    );
    let local: Value = serde_json::from_str(&agent_b.ok(&["status", "--json"])).expect("json");
    let i = &local["status"]["interfaces"][0];
    assert_eq!(i["hook"], "tcx-ingress", "{local:#}");
    assert_eq!(i["ahead"][0]["id"], other_id, "{local:#}");

    // vm-c: the agent detaches enforcement and stops.
    let pin_c = agent_c.pin_dir.display().to_string();
    agent_c.ok(&["detach", "--yes", "--pin-dir", &pin_c]);
    agent_c.stop();
    assert!(
        wait_until(
            Duration::from_secs(15),
            || vm_status(&ctl, &ws, "vm-c")["status"] == "offline"
        ),
        "vm-c not offline: {}",
        vm_status(&ctl, &ws, "vm-c")
    );

    // The controller's own address holds a grant on vm-a:22: reachable, but not a finding.
    ok(
        ctl.jit(
            &ws,
            &args("request vm-a --port 22 --duration 10m --justification compliance-probe --wait"),
        ),
        "request",
    );

    ok(
        ctl.jit(&ws, &args("compliance assign --resource-group prod")),
        "assign prod",
    );
    ok(
        ctl.jit(&ws, &args("compliance assign --resource-group dev")),
        "assign dev",
    );
    // Assigning twice is a conflict (exit 7), and nothing changes.
    let again = ctl.jit(&ws, &args("compliance assign --resource-group dev"));
    assert_eq!(again.status.code(), Some(7), "{again:?}");
    std::thread::sleep(Duration::from_millis(1500)); // beyond the 1 s offline grace
    let sum = json(&ctl, &ws, &["compliance", "probe", "--json"]);
    assert_eq!(sum["probed"], true, "{sum}");

    let rep = json(&ctl, &ws, &["compliance", "--group-by", "owner", "--json"]);
    // vm-a: compliant although 22 answered the controller (under its own grant).
    assert_eq!(result(&rep, "vm-a")["state"], "Compliant", "{rep:#}");
    // vm-b: sshd on 22 unprotected, reachable without JIT, dummy0 unprotected.
    let rb = result(&rep, "vm-b");
    assert_eq!(rb["state"], "NonCompliant", "{rb:#}");
    let f = finding(rb, "ListeningUnprotected");
    assert_eq!(f["port"], "22/TCP", "{f}");
    assert_eq!(f["interface"], "*", "wildcard bind: {f}");
    let f = finding(rb, "ReachableWithoutJit");
    assert_eq!(f["address"], b.v4.to_string(), "{f}");
    assert_eq!(f["port"], "22/TCP", "{f}");
    let f = finding(rb, "InterfaceUnprotected");
    assert_eq!(f["interface"], "dummy0", "{f}");
    // The program ahead of jitgate's: its own finding, on its interface, named.
    let f = finding(rb, "ProgramNotFirst");
    assert_eq!(f["interface"], "eth0", "{f}");
    let why = f["reason"].as_str().unwrap_or("");
    assert!(
        why.contains(&format!("jitgate_floor (id {other_id}, xdp)")),
        "{f}"
    );
    // Not also in the agent's words: one fact, one finding.
    assert!(
        !codes(rb).contains(&"ProgramUnhealthy".to_string()),
        "{rb:#}"
    );
    let udp = rb["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["code"] == "ListeningUnprotected" && f["port"] == "3389/UDP")
        .unwrap_or_else(|| panic!("UDP 3389 not found: {rb:#}"));
    assert_eq!(udp["address"], "::", "{udp}");
    assert_eq!(udp["interface"], "*", "{udp}");
    // vm-c: agent offline, enforcement gone, reachable.
    let rc = result(&rep, "vm-c");
    assert_eq!(rc["state"], "NonCompliant", "{rc:#}");
    let cc = codes(rc);
    assert!(
        cc.contains(&"AgentOffline".to_string()) && cc.contains(&"ReachableWithoutJit".to_string()),
        "{rc:#}"
    );
    // The host with no agent, registered nowhere: unmanaged.
    let rd = result(&rep, &d.v4.to_string());
    assert_eq!(rd["kind"], "unmanagedHost", "{rd:#}");
    assert_eq!(finding(rd, "Unmanaged")["port"], "22/TCP");
    assert_eq!(rep["compliant"], 1, "{rep:#}");
    assert_eq!(rep["nonCompliant"], 2, "{rep:#}");
    assert_eq!(rep["unmanaged"], 1, "{rep:#}");
    // Grouped by owner: one remediation request per owner.
    let groups = rep["groups"].as_array().expect("groups");
    let names = |key: &str| -> Vec<String> {
        groups
            .iter()
            .find(|g| g["key"] == key)
            .unwrap_or_else(|| panic!("no group {key}: {groups:#?}"))["nonCompliant"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["resource"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(names("dev@example.net"), ["vm-b"]);
    assert_eq!(names("ops@example.net"), ["vm-c"]);
    assert_eq!(names("(unassigned)"), [d.v4.to_string()]);

    let text = ok(ctl.jit(&ws, &args("compliance --group-by owner")), "report");
    assert!(
        text.contains("dev@example.net") && text.contains("ListeningUnprotected"),
        "{text}"
    );

    // CSV: fixed columns, one row per finding.
    let csv = ok(ctl.jit(&ws, &args("compliance --csv")), "csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("resource,kind,resourceGroup,owner,state,finding,port,interface,address,reason")
    );
    assert!(
        csv.lines().any(|l| l.starts_with(
            "vm-b,virtualMachine,dev,dev@example.net,NonCompliant,ListeningUnprotected,22/TCP,*,"
        )),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("vm-a,virtualMachine,prod,ops@example.net,Compliant,,")),
        "{csv}"
    );

    // Remediate vm-b: dummy0 goes, the other XDP program goes (jitgate is then first: its
    // next hook report says so), the default template protects 22; the next evaluation
    // (with a probe) shows it compliant.
    ips(&format!("-n {} link del dummy0", b.ns)).expect("del dummy0");
    drop(other);
    ok(
        ctl.jit(&ws, &args("compliance remediate vm-b --template default")),
        "remediate",
    );
    let missing = ctl.jit(&ws, &args("compliance remediate vm-b --template nosuch"));
    assert_eq!(missing.status.code(), Some(6), "{missing:?}");
    assert!(
        wait_until(Duration::from_secs(20), || agent_b
            .ok(&["status"])
            .contains("22/tcp")),
        "template policy not applied: {}",
        agent_b.ok(&["status"])
    );
    let mut last = Value::Null;
    let compliant = wait_until(Duration::from_secs(40), || {
        json(&ctl, &ws, &["compliance", "probe", "--json"]);
        last = json(&ctl, &ws, &["compliance", "--scope", "vm:vm-b", "--json"]);
        result(&last, "vm-b")["state"] == "Compliant"
    });
    assert!(compliant, "vm-b after remediation: {last:#}");
    assert!(
        sshds[1]
            .ssh(&ws, b.v4, "true", 2)
            .map(|o| !o.status.success())
            .unwrap_or(true),
        "ssh to vm-b still open without a grant"
    );
    // Audited: assignment and remediation in the hash-chained activity log.
    let audit = ok(ctl.jit(&ws, &args("audit --json --limit 1000")), "audit");
    assert!(audit.contains("Assign Compliance Policy"), "{audit}");
    assert!(audit.contains("Remediate Compliance"), "{audit}");
    ok(ctl.jit(&ws, &args("audit verify")), "audit verify");

    // A VM added to an assigned group later is evaluated with no further setup.
    fleet.add_vm(4).expect("add vm");
    let e = &fleet.vms[4];
    let token_e = ctl.add_vm("vm-e", e.v4);
    ok(ctl.jit(&ws, &args("compliance scan")), "scan");
    let rep = json(&ctl, &ws, &["compliance", "--json"]);
    let re = result(&rep, "vm-e");
    assert_eq!(re["state"], "Unknown", "no agent yet: {re:#}");
    assert_eq!(codes(re), ["NoAgent"]);
    let _agent_e = AgentProc::start_enrolled(
        &e.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token_e,
    );
    let compliant = wait_until(Duration::from_secs(30), || {
        json(&ctl, &ws, &["compliance", "scan", "--json"]);
        last = json(&ctl, &ws, &["compliance", "--json"]);
        result(&last, "vm-e")["state"] == "Compliant"
    });
    assert!(compliant, "vm-e: {last:#}");

    // History: every evaluation, with its percentage.
    let hist = json(&ctl, &ws, &["compliance", "history", "--json"]);
    let h = hist.as_array().expect("history");
    assert!(h.len() >= 4, "{hist:#}");
    assert!(
        h.iter()
            .any(|x| x["compliancePercentage"].as_f64().is_some_and(|p| p < 50.0)),
        "{hist:#}"
    );
    // The state at a past date: the first evaluation's.
    let first = &h[0];
    let past = json(
        &ctl,
        &ws,
        &[
            "compliance",
            "--at",
            first["timeUtc"].as_str().expect("time"),
            "--json",
        ],
    );
    assert_eq!(past["scan"]["scanId"], first["scanId"], "{past:#}");
    drop(agent_a);
}

/// The scan ids `jit compliance history` lists.
fn scan_ids(ctl: &ControllerProc, ns: &str) -> Vec<i64> {
    json(ctl, ns, &["compliance", "history", "--json"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["scanId"].as_i64())
        .collect()
}

/// Scrolls the element with `id` to the top, so that the screenshot shows it.
async fn scroll_to(b: &jitgate_browser::Browser, id: &str) {
    b.execute(
        "document.getElementById(arguments[0]).scrollIntoView(); return null;",
        vec![serde_json::json!(id)],
    )
    .await
    .unwrap_or_else(|e| panic!("scroll to {id}: {e}"));
}

/// Presses Probe now on the page shown and waits for the evaluation's answer.
async fn probe_now(b: &jitgate_browser::Browser, ctl: &ControllerProc, ns: &str) {
    let next = scan_ids(ctl, ns).last().copied().unwrap_or(0) + 1;
    b.click_button("Probe now").await.expect("Probe now");
    b.wait_for_text_within(&format!("Evaluation {next} done"), Duration::from_secs(60))
        .await
        .expect("the evaluation's answer");
}

/// The dashboard in a real browser: one compliant VM, one whose sshd listens unprotected
/// (its group's owner a hostile string), and a host with sshd and no agent that the probe
/// finds; each shown with its findings, grouped by owner; Remediate from its confirmation
/// turns the VM compliant at the next probe; the chart has a point per evaluation.
#[tokio::test]
async fn compliance_dashboard_in_a_browser() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(3).expect("fleet");
    let ws = fleet.ws.clone();
    let origin = format!("https://{WS_V4}:8443");
    let ctl =
        ControllerProc::start_with(&ws, WS_V4, &format!("public_url = \"{origin}\"\n{CONFIG}"));
    let _sshds: Vec<Sshd> = fleet
        .vms
        .iter()
        .map(|v| Sshd::start(&v.ns).expect("sshd"))
        .collect();
    let (a, bv, c) = (&fleet.vms[0], &fleet.vms[1], &fleet.vms[2]);
    let token_a = ctl.add_vm("vm-a", a.v4);
    ctl.admin(&["rg", "add", "dev", "--owner", HOSTILE]);
    let token_b = vm_b_in_dev_and_prod_policy(&ctl, &ws, bv.v4);
    let _agent_a = AgentProc::start_enrolled(
        &a.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token_a,
    );
    let agent_b = AgentProc::start_enrolled(
        &bv.ns,
        &args("--interface eth0 --protect 2222/tcp"),
        &ctl.api,
        &ctl.ca,
        &token_b,
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            vm_status(&ctl, &ws, "vm-a")["status"] == "online"
                && vm_status(&ctl, &ws, "vm-b")["status"] == "online"
        }),
        "fleet status: {}",
        ok(ctl.jit(&ws, &args("vms --json")), "vms")
    );

    let b = workstation_browser("compliance_dashboard", &Fleet::ns_path(&ws), &ctl, &origin).await;
    let link = admin_link(&ctl);
    b.goto(link["url"].as_str().expect("url"))
        .await
        .expect("link");
    b.wait_for_text("This link signs you in as link:alice")
        .await
        .expect("link page");
    b.click_button("Sign in").await.expect("sign in");
    b.wait_for_url(&format!("{origin}/jit"))
        .await
        .expect("signed in");
    b.click_link("Compliance").await.expect("Compliance");
    b.wait_for_text("Not assigned anywhere")
        .await
        .expect("dashboard");
    b.checkpoint("compliance-empty").await;

    // Assign the policy to the fleet, then probe and evaluate.
    b.fill("#assign-scope", "*").await.expect("scope");
    b.click_button("Assign").await.expect("Assign");
    b.wait_for_text("The compliance policy is assigned at *")
        .await
        .expect("assigned");
    probe_now(&b, &ctl, &ws).await;
    b.wait_for_text("1 compliant, 1 non-compliant, 0 unknown, 1 unmanaged host")
        .await
        .expect("counts");
    let text = |css: String| {
        let b = &b;
        async move {
            b.find(&css)
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"))
                .text()
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"))
        }
    };
    // vm-b under its owner (the hostile string, as text), with its findings in words.
    let nc = text("section[aria-labelledby=nc-h]".into()).await;
    assert!(nc.contains(&format!("Owner {HOSTILE}")), "{nc}");
    let rb = text("[id=res-vm-b]".into()).await;
    for want in [
        "Listening without JIT",
        "22/TCP",
        "* (every interface)",
        "is not in the agent's protected set",
        "Reachable without JIT",
        &bv.v4.to_string(),
        "Remediate vm-b",
    ] {
        assert!(rb.contains(want), "{want:?} in {rb}");
    }
    // The host without an agent, found by the probe; vm-a compliant.
    let rc = text(format!("[id=\"res-{}\"]", c.v4)).await;
    assert!(
        rc.contains("Unmanaged host") && rc.contains("22/TCP"),
        "{rc}"
    );
    assert!(text("[id=ok-vm-a]".into()).await.contains("vm-a"));
    assert_nothing_injected(&b).await;
    scroll_to(&b, "nc-h").await;
    b.checkpoint("compliance-findings").await;

    // Remediate: the confirmation shows the policy; confirmed, the agent protects 22.
    b.click_link("Remediate vm-b").await.expect("Remediate");
    b.wait_for_text("The policy it will set")
        .await
        .expect("confirmation");
    let policy = text("table.policy".into()).await;
    assert!(
        policy.contains("22/TCP") && policy.contains("PT3H"),
        "{policy}"
    );
    b.checkpoint("compliance-remediate").await;
    b.click_button("Enable JIT on vm-b")
        .await
        .expect("Enable JIT");
    b.wait_for_text("JIT enabled on vm-b")
        .await
        .expect("remediated");
    assert_nothing_injected(&b).await;
    b.checkpoint("compliance-remediated").await;
    assert!(
        wait_until(Duration::from_secs(20), || agent_b
            .ok(&["status"])
            .contains("22/tcp")),
        "template policy not applied: {}",
        agent_b.ok(&["status"])
    );
    // The next evaluations (each with a probe) turn it compliant.
    let mut compliant = false;
    for _ in 0..10 {
        probe_now(&b, &ctl, &ws).await;
        if b.find("[id=ok-vm-b]").await.is_ok() {
            compliant = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        compliant,
        "vm-b never compliant: {}",
        b.text().await.unwrap_or_default()
    );
    b.wait_for_text("2 compliant, 0 non-compliant")
        .await
        .expect("counts");

    // The chart: one point per evaluation, as the history lists them.
    b.goto(&format!("{origin}/compliance"))
        .await
        .expect("dashboard");
    b.wait_for_text("Over time").await.expect("chart");
    let ids = scan_ids(&ctl, &ws);
    assert!(ids.len() >= 2, "{ids:?}");
    let shown = b
        .execute(
            "return Array.from(document.querySelectorAll('circle.point')).map(c => Number(c.dataset.scan));",
            vec![],
        )
        .await
        .expect("points");
    assert_eq!(shown, serde_json::json!(ids), "one point per evaluation");
    scroll_to(&b, "chart-h").await;
    b.checkpoint("compliance-chart").await;
    b.close().await.expect("close");
}
