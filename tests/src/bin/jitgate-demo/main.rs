//! `cargo xtask demo`: the reference scenario, end to end, on this machine.
//!
//! Network namespaces stand in for a workstation (which also runs the controller) and VMs;
//! vm-01 runs a real sshd and jit-agent. The operator's SSH is refused; `jit connect ssh`
//! asks the controller for access (source: My IP), waits until the agent applied the signed
//! grant, and runs a command over a real SSH session; the window ends and SSH is refused
//! again; the request history and the activity log are printed. Then the same in the web
//! portal, in a real Chromium inside the workstation namespace, with a screenshot of each
//! step: sign in with a one-time link, request SSH with My IP, Applied live, SSH, Revoke.
//!
//! `--portal` (`cargo xtask demo --portal`): the lab keeps running for a person's own browser,
//! at a loopback URL with a one-time sign-in link, until Ctrl-C.
//!
//! Everything is removed at the end, also on failure and on Ctrl-C or SIGTERM, and the demo
//! checks that nothing is left (namespaces, pins, processes).

mod cli_walk;
mod lab;
mod portal_walk;
mod serve;
mod stop;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use lab::{Lab, Made, Reach};
use stop::{Outcome, Step};

pub fn step(n: u32, what: &str) {
    println!("\n\x1b[1m── {n}. {what}\x1b[0m");
}

pub fn show(o: &std::process::Output) {
    // Progress lines go to stderr; show them first.
    let err = String::from_utf8_lossy(&o.stderr);
    if !err.trim().is_empty() {
        print!("{err}");
    }
    print!("{}", String::from_utf8_lossy(&o.stdout));
}

const USAGE: &str = "usage: jitgate-demo [--portal]\n  (none)    the scenario on the command line, then in the portal (screenshots), then clean up\n  --portal  keep the lab running for your browser until Ctrl-C";

fn main() -> ExitCode {
    let portal = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => false,
        [a] if a == "--portal" => true,
        [a] if a == "-h" || a == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("jitgate demo: unknown arguments {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "jitgate demo: run as root (it creates network namespaces and loads an XDP program)"
        );
        return ExitCode::from(2);
    }
    stop::install();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jitgate demo: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let t0 = Instant::now();
    let mut made = Made::default();
    let outcome = if portal {
        serve::run(&rt, &mut made)
    } else {
        demo(&rt, &mut made)
    };
    // The lab has been dropped by now; the runtime's tasks (forwarded connections) go too.
    drop(rt);
    let mut code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Outcome::Stopped) => {
            println!("\ninterrupted");
            ExitCode::from(130)
        }
        Err(Outcome::Failed(e)) => {
            eprintln!("\njitgate demo failed: {e}");
            ExitCode::FAILURE
        }
    };
    let left = made.left_over(Duration::from_secs(15));
    if left.is_empty() {
        println!(
            "\ncleaned up: {} network namespaces, {} processes (controller, agent, sshd{}) and \
             the agent's pins removed ({:.0} s in all)",
            made.namespaces.len(),
            made.pids.len(),
            if portal { "" } else { ", Chromium" },
            t0.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("\nleft behind: {}", left.join(", "));
        code = ExitCode::FAILURE;
    }
    code
}

/// The whole scenario: the command line, then the portal.
fn demo(rt: &tokio::runtime::Runtime, made: &mut Made) -> Step {
    println!("\x1b[1mjitgate demo\x1b[0m — just-in-time SSH, enforced in the kernel");
    let lab = Lab::start(Reach::LabAddress, rt, made)?;
    let vm = &lab.fleet.vms[0];
    println!(
        "workstation + controller: namespace {} ({}); vm-01: namespace {} ({}), running sshd",
        lab.fleet.ws,
        jitgate_tests::fleet::WS_V4,
        vm.ns,
        vm.v4
    );
    println!(
        "controller: {}/ ; JIT policy on resource group prod: 22/tcp from 198.51.100.0/24, at \
         most 1 h, cut at expiry; vm-02 ({}) in staging has no policy",
        lab.origin, lab.fleet.vms[1].v4
    );
    println!("jit-agent enrolled and enforcing on vm-01 eth0 (XDP)");
    let r = cli_walk::run(&lab)
        .and_then(|()| rt.block_on(stop::or_stop(portal_walk::run(&lab, made, 6))));
    made.note_processes();
    r
}
