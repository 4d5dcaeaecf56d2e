//! `cargo xtask demo`: the reference scenario, end to end, on this machine.
//!
//! Network namespaces stand in for a workstation (which also runs the controller) and a VM
//! running a real sshd and jit-agent. The operator's SSH is refused; `jit connect ssh` asks
//! the controller for access (source: My IP), waits until the agent applied the signed grant,
//! and runs a command over a real SSH session; the window ends and SSH is refused again;
//! the request history and the activity log are printed. Everything is removed at the end,
//! also on Ctrl-C.

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, Sshd, WS_V4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps, waking early on Ctrl-C.
fn nap(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stopped() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !stopped()
}

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m── {n}. {what}\x1b[0m");
}

fn show(o: &std::process::Output) {
    // Progress lines go to stderr; show them first.
    let err = String::from_utf8_lossy(&o.stderr);
    if !err.trim().is_empty() {
        print!("{err}");
    }
    print!("{}", String::from_utf8_lossy(&o.stdout));
}

const WINDOW_SECS: u64 = 25;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "jitgate demo: run as root (it creates network namespaces and loads an XDP program)"
        );
        std::process::exit(2);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let code = run();
    // Drops have run: namespaces, processes and pins are gone.
    println!("\ncleaned up: namespaces, controller, agent, sshd and pins removed.");
    std::process::exit(code);
}

fn run() -> i32 {
    println!("\x1b[1mjitgate demo\x1b[0m — just-in-time SSH, enforced in the kernel");
    let fleet = match Fleet::new(1) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot create namespaces: {e}");
            return 1;
        }
    };
    let vm = &fleet.vms[0];
    let sshd = match Sshd::start(&vm.ns) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start sshd: {e}");
            return 1;
        }
    };
    println!(
        "workstation + controller: namespace {} ({WS_V4}); vm-01: namespace {} ({}), running sshd",
        fleet.ws, vm.ns, vm.v4
    );
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let token = ctl.add_vm("vm-01", vm.v4);
    let policy = ctl.jit(
        &fleet.ws,
        &args("policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 --max 1h --on-expiry cut"),
    );
    if !policy.status.success() {
        show(&policy);
        return 1;
    }
    println!(
        "controller: https://{} ; JIT policy on resource group prod: 22/tcp from 198.51.100.0/24, at most 1 h, cut at expiry",
        ctl.api
    );
    let agent = AgentProc::start_enrolled(
        &vm.ns,
        &args("--interface eth0 --protect 22/tcp:cut"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    println!("jit-agent enrolled and enforcing on vm-01 eth0 (XDP)");
    if !nap(Duration::from_secs(1)) {
        return 130;
    }

    step(1, "SSH to vm-01 is refused");
    let o = sshd.ssh(&fleet.ws, vm.v4, "hostname", 3).ok();
    match o {
        Some(o) if !o.status.success() => println!(
            "$ ssh root@{} hostname\n{}→ refused: no grant",
            vm.v4,
            String::from_utf8_lossy(&o.stderr)
        ),
        _ => {
            println!("unexpected: SSH got in without a grant");
            return 1;
        }
    }
    if stopped() {
        return 130;
    }

    step(
        2,
        &format!(
            "jit connect ssh vm-01 (source: My IP, window {WINDOW_SECS} s, justification given)"
        ),
    );
    let key = sshd.key.display().to_string();
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
    if !o.status.success() {
        println!("unexpected: jit connect failed");
        return 1;
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
        if !nap(Duration::from_secs(1)) {
            return 130;
        }
    }
    println!();
    if !nap(Duration::from_secs(1)) {
        return 130;
    }
    match sshd.ssh(&fleet.ws, vm.v4, "hostname", 3) {
        Ok(o) if !o.status.success() => println!(
            "$ ssh root@{} hostname\n→ refused: the grant ended (the kernel compares every packet against its end)",
            vm.v4
        ),
        _ => {
            println!("unexpected: SSH still works after the window");
            return 1;
        }
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
    println!("{}", agent.ok(&["audit", "--tail", "12"]));
    println!("$ jit audit checkpoint   (the controller signs the chain head; also every 5 min)");
    show(&ctl.jit(&fleet.ws, &args("audit checkpoint")));
    println!("\n$ jit audit verify");
    show(&ctl.jit(&fleet.ws, &args("audit verify")));
    0
}
