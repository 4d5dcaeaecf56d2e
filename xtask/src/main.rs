//! Developer automation: `cargo xtask setup | test | bench ...`.
//!
//! Deliberately depends on nothing of the project: it must build on a fresh machine before
//! the eBPF toolchain that the rest of the workspace needs is installed (by `setup`).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(about = "jitgate developer tasks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (idempotent): llvm-22-dev, bpf-linker 0.13.0,
    /// nightly rust-src, iproute2, nftables, iptables, and the bpffs mount.
    Setup,
    /// Run setup, then formatting and lint checks, then every test (root tests need root;
    /// with CI=true they fail rather than skip without it).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// The reference scenario end to end (root): SSH refused, `jit connect ssh`, a real
    /// session, the window ends, history and activity log. Cleans up, also on Ctrl-C.
    Demo,
    /// Run a benchmark and write its section of BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Soak (root; not part of `test`): the controller and an agent in namespaces under a
    /// seeded random sequence of requests, revocations, expiries, local grants and kills of
    /// either process; after each step the kernel's verdicts must equal the reference model's.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Replay a run (its seed is printed at the start and the end).
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum Bench {
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Test {
            no_lint,
            cargo_args,
        } => {
            setup()?;
            test(no_lint, &cargo_args)
        }
        Cmd::Demo => {
            setup()?;
            run(Command::new("cargo").args(["build", "--bins"]))?;
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| if t.is_absolute() { t } else { root.join(t) })
                .unwrap_or_else(|| root.join("target"));
            run(&mut Command::new(target.join("debug/jitgate-demo")))
        }
        Cmd::Bench { which } => {
            setup()?;
            bench(&root, which)
        }
        Cmd::Soak { minutes, seed } => {
            setup()?;
            let mut a = vec!["soak".to_string(), "--minutes".into(), minutes.to_string()];
            if let Some(s) = seed {
                a.extend(["--seed".into(), s.to_string()]);
            }
            let out = run_bench_binary(&root, &a)?;
            print!("{out}");
            Ok(())
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// Debian packages the build and the tests need.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "procps",
    "util-linux",
    "openssh-server",
    "openssh-client",
    // The flood benchmark's comparison receivers.
    "nftables",
    "iptables",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn setup() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing Debian packages {missing:?}; run `cargo xtask setup` as root");
        }
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let has_linker = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !has_linker {
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            // Without it the link fails with "unable to find library -lLLVM".
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }

    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|l| l.lines().any(|c| c.starts_with("rust-src")));
    if !has_src {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // The conventional bpffs; jitgate itself pins under /run (see agent/src/bpffs.rs).
    let bpffs = Path::new("/sys/fs/bpf");
    let mounted = output(Command::new("stat").args(["-f", "-c", "%T"]).arg(bpffs))
        .is_some_and(|t| t.trim() == "bpf_fs");
    if !mounted && is_root() {
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(bpffs))?;
    }
    eprintln!("setup: toolchain and system packages present");
    Ok(())
}

fn test(no_lint: bool, extra: &[String]) -> Result<()> {
    if !no_lint {
        run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
        run(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    // The end-to-end tests run the real binaries (jit-agent, ...).
    run(Command::new("cargo").args(["build", "--bins"]))?;
    cargo_test_with_summary(extra)
}

/// Runs `cargo test`, streaming its output, then prints one closing line with the totals
/// over every test binary (cargo's own last line is that of the last binary only).
fn cargo_test_with_summary(extra: &[String]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new("cargo");
    cmd.arg("test")
        .args(extra)
        .stdout(std::process::Stdio::piped());
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn().context("spawning cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut it = part.split_whitespace();
                if let (Some(n), Some(what)) = (it.next(), it.next())
                    && let Ok(n) = n.parse::<u64>()
                {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

fn bench(root: &Path, which: Bench) -> Result<()> {
    match which {
        Bench::Controller { quick } => bench_controller(root, quick),
        Bench::Dataplane { quick } => bench_binary(root, "dataplane", quick),
        Bench::Agent { quick } => bench_binary(root, "agent", quick),
        Bench::Flood { quick } => bench_binary(root, "flood", quick),
        Bench::E2e { quick } => bench_binary(root, "e2e", quick),
        Bench::Scale { quick } => bench_binary(root, "scale", quick),
        Bench::Load { quick } => bench_binary(root, "load", quick),
    }
}

fn bench_controller(root: &Path, quick: bool) -> Result<()> {
    let args: &[&str] = if quick {
        &["--requests", "2000", "--history", "5000"]
    } else {
        &["--requests", "20000", "--history", "100000"]
    };
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "jitgate-controller",
        "--example",
        "bench",
        "--",
    ])
    .args(args);
    eprintln!("+ {cmd:?}");
    let out = cmd.output().context("running the controller benchmark")?;
    if !out.status.success() {
        bail!(
            "benchmark failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let section = String::from_utf8(out.stdout).context("benchmark output is not UTF-8")?;
    print!("{section}");
    if quick {
        return Ok(());
    }
    write_section(
        &root.join("BENCHMARKS.md"),
        "controller",
        "cargo xtask bench controller",
        &section,
    )
}

/// Runs `jitgate-bench NAME` and writes its section of BENCHMARKS.md.
fn bench_binary(root: &Path, name: &str, quick: bool) -> Result<()> {
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
fn run_bench_binary(root: &Path, args: &[String]) -> Result<String> {
    // The benchmarks run the real binaries (jit-agent) beside jitgate-bench.
    run(Command::new("cargo").args(["build", "--release", "--bins"]))?;
    // Honour CARGO_TARGET_DIR (shared machines build into their own target directories).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/jitgate-bench");
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
fn write_section(path: &Path, name: &str, command: &str, body: &str) -> Result<()> {
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
