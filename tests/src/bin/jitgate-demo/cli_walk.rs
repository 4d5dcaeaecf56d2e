//! The command-line part of the demo: SSH refused, `jit connect ssh`, a real session, the
//! window ends, history and activity log.

use std::time::{Duration, Instant};

use jitgate_tests::agent::args;

use crate::lab::Lab;
use crate::stop::{Step, check, fail, nap};
use crate::{show, step};

const WINDOW_SECS: u64 = 25;

pub fn run(lab: &Lab) -> Step {
    let (fleet, ctl) = (&lab.fleet, &lab.ctl);
    let vm = &fleet.vms[0];

    step(1, "SSH to vm-01 is refused");
    match lab.ssh("hostname", 3)? {
        (false, err) => println!("$ ssh root@{} hostname\n{err}→ refused: no grant", vm.v4),
        (true, _) => return Err(fail("unexpected: SSH got in without a grant")),
    }
    check()?;

    step(
        2,
        &format!(
            "jit connect ssh vm-01 (source: My IP, window {WINDOW_SECS} s, justification given)"
        ),
    );
    let key = lab.sshd.key.display().to_string();
    let connect_args = vec![
        "connect".to_string(),
        "ssh".into(),
        "vm-01".into(),
        "--duration".into(),
        format!("{WINDOW_SECS}s"),
        "-j".into(),
        "demo: rotate the TLS certificate (CHG-1234)".into(),
        "-l".into(),
        "root".into(),
        "-c".into(),
        "echo \"hello from $(hostname) as $(id -un)\"; uptime".into(),
        "--".into(),
        "-i".into(),
        key,
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
    ];
    let refs: Vec<&str> = connect_args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let o = ctl.jit(&fleet.ws, &refs);
    println!(
        "$ jit connect ssh vm-01 --duration {WINDOW_SECS}s -j \"demo: rotate the TLS certificate (CHG-1234)\" -l root -c '...'"
    );
    step(3, "a real SSH session runs a command");
    show(&o);
    check()?;
    if !o.status.success() {
        return Err(fail("unexpected: jit connect failed"));
    }
    let end = t0 + Duration::from_secs(WINDOW_SECS);
    println!(
        "(request → access applied → command ran in {:.2} s)",
        t0.elapsed().as_secs_f64()
    );

    step(4, "the window ends; SSH is refused again");
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now()).as_secs();
        print!("\r{left:>3} s left of the window ");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        nap(Duration::from_secs(1))?;
    }
    println!();
    nap(Duration::from_secs(1))?;
    match lab.ssh("hostname", 3)? {
        (false, _) => println!(
            "$ ssh root@{} hostname\n→ refused: the grant ended (the kernel compares every packet against its end)",
            vm.v4
        ),
        (true, _) => return Err(fail("unexpected: SSH still works after the window")),
    }

    step(5, "request history and activity log");
    println!("$ jit history vm-01");
    show(&ctl.jit(&fleet.ws, &args("history vm-01")));
    println!("\n$ jit audit --vm vm-01");
    show(&ctl.jit(&fleet.ws, &args("audit --vm vm-01")));
    println!(
        "\n$ jit connections vm-01 --denied   (who connected, from where, under which request)"
    );
    show(&ctl.jit(&fleet.ws, &args("connections vm-01 --denied --limit 10")));
    println!("\n$ jit-agent audit   (on vm-01: the agent's own hash-chained log)");
    println!("{}", lab.agent.ok(&["audit", "--tail", "12"]));
    println!("$ jit audit checkpoint   (the controller signs the chain head; also every 5 min)");
    show(&ctl.jit(&fleet.ws, &args("audit checkpoint")));
    println!("\n$ jit audit verify");
    show(&ctl.jit(&fleet.ws, &args("audit verify")));
    check()
}
