//! `cargo xtask bench ...`: each benchmark's runner and its section of BENCHMARKS.md.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run, target_dir};
use clap::Subcommand;

#[derive(Subcommand, Clone)]
pub(crate) enum Bench {
    /// ns per packet of the XDP program (BPF_PROG_TEST_RUN) at 0, 10 000 and 1 000 000
    /// grants, beside a do-nothing XDP program.
    Dataplane {
        /// Fewer repeats and grants: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
    /// The controller over HTTPS: initiate requests/s and p99 at 64 callers, beside an
    /// authenticated trivial GET, empty and with 100 000 requests in history.
    Controller {
        /// Fewer requests and history: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
    /// The web portal over HTTPS with 10 000 VMs and 1 000 000 requests in history: each
    /// page type's response time p50/p99 beside the signed-in floor page, and its weight with
    /// its assets.
    Portal {
        /// 1 000 VMs and 20 000 requests: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
        /// Keep the seeded state in DIR and reuse it when it is there (seeding the full
        /// size takes about 20 minutes; measuring again then takes one).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Simulated agents speaking the real protocol (mutual TLS, level 3, signatures checked,
    /// acknowledgements, status reports and pongs on the agent's schedule) against real
    /// controllers on one throwaway PostgreSQL: connections held, controller RSS per agent,
    /// the idle keepalive's CPU (controllers + PostgreSQL, and the generator's own), and
    /// request → agent acknowledgement p50/p99 at 500 initiates/s.
    Fleet {
        /// 1 000 agents, 10 s of load: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
        /// How many simulated agents (default 10 000).
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        /// How many controllers share the agents (default 1).
        #[arg(long, default_value_t = 1)]
        controllers: usize,
        /// Initiates per second during the load phase [default: the fleet bench's, 500].
        #[arg(long)]
        rate: Option<u32>,
        /// SIGKILL the first controller a third of the way into the load (needs
        /// `--controllers` 2 or more): how long its agents take to be welcomed by another,
        /// and whether a grant answered OK was lost. Written to its own section,
        /// "fleet-failover".
        #[arg(long)]
        kill_one: bool,
    },
    /// The agent through its admin socket: grants/s (8 clients), grant → first admitted
    /// packet p50/p99, RSS at 100 000 grants.
    Agent {
        /// Fewer grants and rounds: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
    /// A SYN flood over veth against jitgate, nftables (inet and netdev) and iptables in
    /// turn: receive-side CPU per dropped packet and a granted client's connect latency, at 1
    /// and 10 000 grants (rule sets in bench/flood/).
    Flood {
        /// One round of 1 s windows: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
    /// The whole system in namespaces (root): `jit request` → first admitted packet at the VM
    /// p50/p99 over 1 000 requests beside a local `jit-agent grant` through the same agent,
    /// revoke → door shut, and grants fanned out per second across 50 agents.
    E2e {
        /// 50 rounds and 10 agents: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
    /// The agent at 1 000 000 active grants (root): load time, map memory, RSS, and the
    /// sweep of 100 000 grants ending in the same second while real packets are judged.
    Scale {
        /// 100 000 grants: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
    /// The controller under load (root): 1 000 concurrent requesters (own tokens, own HTTPS
    /// connections) for 60 s with 50 enrolled agents; req/s, p50/p99, no errors, and the
    /// activity log, the requests' states and every agent's grants checked afterwards.
    Load {
        /// 10 s, 100 requesters, 10 agents: a smoke run, not written to BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
}

pub(crate) fn bench(root: &Path, which: Bench) -> Result<()> {
    match which {
        Bench::Controller { quick } => bench_controller(root, quick),
        Bench::Portal { quick, state } => bench_portal(root, quick, state.as_deref()),
        Bench::Fleet {
            quick,
            agents,
            controllers,
            rate,
            kill_one,
        } => bench_fleet(root, quick, agents, controllers, rate, kill_one),
        Bench::Dataplane { quick } => bench_binary(root, "dataplane", quick),
        Bench::Agent { quick } => bench_binary(root, "agent", quick),
        Bench::Flood { quick } => bench_binary(root, "flood", quick),
        Bench::E2e { quick } => bench_binary(root, "e2e", quick),
        Bench::Scale { quick } => bench_binary(root, "scale", quick),
        Bench::Load { quick } => bench_binary(root, "load", quick),
    }
}

pub(crate) fn bench_controller(root: &Path, quick: bool) -> Result<()> {
    let args: &[&str] = if quick {
        &["--requests", "2000", "--history", "5000"]
    } else {
        &["--requests", "20000", "--history", "100000"]
    };
    bench_example(
        root,
        "bench",
        "controller",
        "cargo xtask bench controller",
        args,
        quick,
    )
}

pub(crate) fn bench_fleet(
    root: &Path,
    quick: bool,
    agents: usize,
    controllers: usize,
    rate: Option<u32>,
    kill_one: bool,
) -> Result<()> {
    if kill_one && controllers < 2 {
        bail!("--kill-one needs --controllers 2 or more (their agents fail over to the others)");
    }
    // The simulated fleet runs against the real `jit-controller` binary.
    run(Command::new("cargo").args(["build", "--release", "--bins"]))?;
    let (agents, seconds) = if quick {
        ("1000".to_string(), "10")
    } else {
        (agents.to_string(), "20")
    };
    let (controllers, rate) = (controllers.to_string(), rate.map(|r| r.to_string()));
    let mut args = vec![
        "--agents",
        agents.as_str(),
        "--controllers",
        controllers.as_str(),
        "--seconds",
        seconds,
    ];
    let mut command =
        format!("cargo xtask bench fleet --agents {agents} --controllers {controllers}");
    if let Some(rate) = &rate {
        args.extend(["--rate", rate.as_str()]);
        command.push_str(&format!(" --rate {rate}"));
    }
    let section = if kill_one {
        args.push("--kill-one");
        command.push_str(" --kill-one");
        "fleet-failover"
    } else {
        "fleet"
    };
    bench_example(root, "fleet_bench", section, &command, &args, quick)
}

pub(crate) fn bench_portal(root: &Path, quick: bool, state: Option<&Path>) -> Result<()> {
    let mut args: Vec<&str> = if quick {
        vec!["--vms", "1000", "--requests", "20000", "--rounds", "100"]
    } else {
        vec!["--vms", "10000", "--requests", "1000000", "--rounds", "300"]
    };
    let dir;
    if let Some(d) = state {
        dir = d.to_str().context("--state: not UTF-8")?.to_string();
        args.extend(["--state", dir.as_str()]);
    }
    bench_example(
        root,
        "portal_bench",
        "portal",
        "cargo xtask bench portal",
        &args,
        quick,
    )
}

/// Runs the controller's example `example` (release) with `args`, progress on stderr, and
/// writes its stdout as the `section` of BENCHMARKS.md (headed by `command`) unless `quick`.
pub(crate) fn bench_example(
    root: &Path,
    example: &str,
    section: &str,
    command: &str,
    args: &[&str],
    quick: bool,
) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "jitgate-controller",
        "--example",
        example,
        "--",
    ])
    .args(args)
    .stderr(std::process::Stdio::inherit());
    eprintln!("+ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("running the {section} benchmark"))?;
    if !out.status.success() {
        bail!("the {section} benchmark failed: {}", out.status);
    }
    let body = String::from_utf8(out.stdout).context("benchmark output is not UTF-8")?;
    print!("{body}");
    if quick {
        return Ok(());
    }
    write_section(&root.join("BENCHMARKS.md"), section, command, &body)
}

/// Runs `jitgate-bench NAME` and writes its section of BENCHMARKS.md.
pub(crate) fn bench_binary(root: &Path, name: &str, quick: bool) -> Result<()> {
    let command = format!("cargo xtask bench {name}");
    let mut args = vec![name.to_string()];
    if quick {
        args.push("--quick".into());
    }
    let section = run_bench_binary(root, &args)?;
    print!("{section}");
    if quick {
        eprintln!("(--quick: BENCHMARKS.md not updated)");
        return Ok(());
    }
    write_section(&root.join("BENCHMARKS.md"), name, &command, &section)
}

/// Builds the release binaries and runs `jitgate-bench ARGS`; its stdout (stderr streams
/// through, so progress shows).
pub(crate) fn run_bench_binary(root: &Path, args: &[String]) -> Result<String> {
    // The benchmarks run the real binaries (jit-agent) beside jitgate-bench.
    run(Command::new("cargo").args(["build", "--release", "--bins"]))?;
    let bin = target_dir(root).join("release/jitgate-bench");
    eprintln!("+ {} {}", bin.display(), args.join(" "));
    let out = Command::new(&bin)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the benchmark")?;
    let stdout = String::from_utf8(out.stdout).context("benchmark output is not UTF-8")?;
    if !out.status.success() {
        bail!("benchmark failed: {}\n{stdout}", out.status);
    }
    Ok(stdout)
}

/// Replaces the marked section `name` of BENCHMARKS.md (or appends it).
pub(crate) fn write_section(path: &Path, name: &str, command: &str, body: &str) -> Result<()> {
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let block = format!(
        "{start}\nCommand: `{command}`\n\n{}\n{end}",
        body.trim_end()
    );
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], block, &old[b + end.len()..]),
        _ => format!("{}\n{}\n", old.trim_end(), block),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote the {name} section of {}", path.display());
    Ok(())
}
