//! Developer automation: `cargo xtask setup | test | bench ...`.
//!
//! Deliberately depends on nothing of the project: it must build on a fresh machine before
//! the eBPF toolchain that the rest of the workspace needs is installed (by `setup`).

mod cycles;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod bench;
mod fuzz;
mod lanes;
mod package;
mod setup;

use bench::{Bench, bench, run_bench_binary};
use fuzz::{
    FUZZ_TARGETS, FuzzBuild, FuzzTarget, fuzz, fuzz_build_command, fuzz_targets, fuzz_verdict,
};
use lanes::{Backend, Job, TestBinary};
use setup::setup;

#[derive(Parser)]
#[command(about = "jitgate developer tasks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (idempotent): llvm-22-dev, bpf-linker 0.13.0,
    /// nightly rust-src, cargo-fuzz 0.13.2, iproute2, nftables, iptables, wireguard-go and
    /// wireguard-tools, PostgreSQL's server binaries (for the test clusters), chromium and
    /// chromium-driver (the browser tests), and the bpffs mount.
    Setup,
    /// Run setup, then formatting, lint and import-cycle checks, then every test (root tests
    /// need root; with CI=true they fail rather than skip without it) and the controller's
    /// test suites again on PostgreSQL, two test binaries at a time, then each fuzz target
    /// briefly. Prints the wall time of each phase (docs/testing.md).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Report import cycles without failing (also JIT_CYCLES=warn).
        #[arg(long)]
        allow_cycles: bool,
        /// Skip the second run of the controller's tests on PostgreSQL.
        #[arg(long)]
        no_postgres: bool,
        /// Seconds each fuzz target runs after the tests (0: skip fuzzing).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
        /// Test binaries run at once (the root tests in namespaces stay one at a time, in
        /// the first lane; 1 runs everything one after the other).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
        lanes: u16,
        /// Extra arguments for `cargo test` (after `--`; what follows a second `--` also goes
        /// to the PostgreSQL run's test binaries).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Import cycles between the modules of each crate (see xtask/src/cycles.rs for the
    /// rules); fails when there is one.
    Cycles {
        /// Report them without failing.
        #[arg(long)]
        warn: bool,
    },
    /// The reference scenario end to end (root): SSH refused, `jit connect ssh`, a real
    /// session, the window ends, history and activity log; then the web portal in headless
    /// Chromium (sign in with a one-time link, request SSH with My IP, Applied live, SSH,
    /// Revoke), a screenshot of each step under <target>/demo/portal/. Cleans up, also on
    /// failure and Ctrl-C, and checks that nothing is left.
    Demo {
        /// Set up the lab (controller, vm-01 with sshd and an agent enforcing with XDP, a
        /// policy, vm-02 without one) and keep it running: prints a loopback URL of the portal
        /// (https://127.0.0.1:PORT/, forwarded into the lab), the CA to trust, a one-time
        /// sign-in link and the SSH command, then waits for Ctrl-C and removes everything.
        #[arg(long)]
        portal: bool,
    },
    /// Build the Debian packages jitgate-agent, jitgate-controller and jitgate-cli from the
    /// release build (cargo-deb); `--test` also installs, upgrades, removes and purges them
    /// in a throwaway Debian root (docs/operations.md).
    Package(package::Args),
    /// Run the libFuzzer targets (fuzz/, docs/fuzzing.md) one after the other. A crash stops
    /// the run and names the input that caused it (under fuzz/artifacts/).
    Fuzz {
        /// Only this target (frame, signed, agent_config, request_json, audit_reader).
        #[arg(long)]
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Test {
            no_lint,
            allow_cycles,
            no_postgres,
            fuzz_seconds,
            lanes,
            cargo_args,
        } => {
            let allow_cycles =
                allow_cycles || std::env::var("JIT_CYCLES").is_ok_and(|v| v == "warn");
            test(
                &root,
                &TestOptions {
                    no_lint,
                    allow_cycles,
                    no_postgres,
                    fuzz_seconds,
                    lanes: usize::from(lanes),
                },
                &cargo_args,
            )
        }
        Cmd::Cycles { warn } => {
            let found = check_cycles(&root)?;
            if found > 0 && !warn {
                bail!("{found} import cycle(s)");
            }
            Ok(())
        }
        Cmd::Fuzz { target, seconds } => {
            setup()?;
            let targets: Vec<&FuzzTarget> = match &target {
                None => FUZZ_TARGETS.iter().collect(),
                Some(name) => vec![
                    FUZZ_TARGETS
                        .iter()
                        .find(|t| t.name == name)
                        .with_context(|| format!("no fuzz target {name:?}"))?,
                ],
            };
            let runs = fuzz(&root, &targets, seconds, FuzzBuild::Thorough)?;
            fuzz_verdict(&runs)
        }
        Cmd::Package(args) => {
            setup()?;
            package::main(&root, args)
        }
        Cmd::Demo { portal } => {
            setup()?;
            run(Command::new("cargo").args(["build", "--bins"]))?;
            let target = target_dir(&root);
            let mut demo = Command::new(target.join("debug/jitgate-demo"));
            if portal {
                demo.arg("--portal");
            }
            // The demo's browser saves its screenshots under <target>/demo/portal/.
            demo.env("JIT_SCREENSHOT_DIR", target.join("demo"));
            // Replaced by the demo: Ctrl-C then reaches it (which cleans up) and no waiting
            // parent that would die first and hand the terminal back mid-cleanup.
            use std::os::unix::process::CommandExt;
            Err(demo.exec()).context("running the demo")
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

/// The build directory: CARGO_TARGET_DIR (shared machines build into their own) or target/.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// A step of `cargo xtask test` that runs beside the others: at the lowest CPU and I/O
/// priority, in a process group of its own, its output in a log file under
/// target/ci-logs/ (printed when it fails). Dropped without [`Background::wait`] (an earlier
/// phase failed), it is stopped when `stop_on_drop` (a build), else waited for (a test that
/// must get to its own clean-up: mounts, throwaway roots).
struct Background {
    name: &'static str,
    stop_on_drop: bool,
    child: std::process::Child,
    log: PathBuf,
    started: Instant,
}

impl Background {
    fn start(root: &Path, name: &'static str, stop_on_drop: bool, cmd: Command) -> Result<Self> {
        let dir = target_dir(root).join("ci-logs");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        // nice 19 + the idle I/O class: the tests beside it keep the CPU and the disk.
        let mut wrapped = Command::new("nice");
        wrapped.args(["-n", "19", "ionice", "-c", "3"]);
        wrapped.arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        use std::os::unix::process::CommandExt;
        wrapped
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        eprintln!("+ (in the background, log {}) {cmd:?}", log.display());
        let child = wrapped
            .spawn()
            .with_context(|| format!("spawning {name} in the background"))?;
        Ok(Self {
            name,
            stop_on_drop,
            child,
            log,
            started: Instant::now(),
        })
    }

    /// Waits for it to end; fails, with its log, when it did.
    fn wait(mut self) -> Result<()> {
        let status = self.child.wait()?;
        let took = self.started.elapsed().as_secs_f64();
        if status.success() {
            eprintln!(
                "{}: done in {took:.0} s in the background (log {})",
                self.name,
                self.log.display()
            );
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(300);
        eprintln!(
            "---- {} (last {} lines of {})",
            self.name,
            lines.len() - from,
            self.log.display()
        );
        for line in &lines[from..] {
            eprintln!("{line}");
        }
        eprintln!("----");
        bail!("{} failed after {took:.0} s: {status}", self.name)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if !self.stop_on_drop {
                eprintln!(
                    "{}: waiting for it to end (an earlier phase failed)",
                    self.name
                );
                let _ = self.child.wait();
                return;
            }
            // The group: cargo and the compilers it started.
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: kill only sends a signal.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
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

struct TestOptions {
    no_lint: bool,
    allow_cycles: bool,
    no_postgres: bool,
    fuzz_seconds: u64,
    lanes: usize,
}

/// Wall time per phase of `cargo xtask test`, printed as each ends and again at the end, so
/// that every change can state what it costs the CI run. Beside it the CPU time of the
/// phase's finished child processes (compilers, test binaries), which varies much less than
/// wall time on a shared machine.
#[derive(Default)]
struct Phases(Vec<Phase>);

struct Phase {
    name: String,
    wall: Duration,
    cpu: Duration,
    ok: bool,
}

/// User + system time of every child process waited for so far (and of their waited-for
/// descendants).
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Phases {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("== phase {name}");
        let (started, cpu_before) = (Instant::now(), children_cpu());
        let r = f();
        let phase = Phase {
            name: name.to_string(),
            wall: started.elapsed(),
            cpu: children_cpu().saturating_sub(cpu_before),
            ok: r.is_ok(),
        };
        eprintln!(
            "== phase {name}: {:.1} s (cpu {:.1} s){}",
            phase.wall.as_secs_f64(),
            phase.cpu.as_secs_f64(),
            if phase.ok { "" } else { " (failed)" }
        );
        self.0.push(phase);
        r
    }

    /// A phase that ran to its end but whose result is a failure (failed tests).
    fn mark_failed(&mut self) {
        if let Some(last) = self.0.last_mut() {
            last.ok = false;
        }
    }

    fn print(&self) {
        let width = self
            .0
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        println!("phase times (wall, and cpu of child processes):");
        let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
        for p in &self.0 {
            wall += p.wall;
            cpu += p.cpu;
            println!(
                "  {:<width$}  {:>7.1} s  {:>7.1} s cpu{}",
                p.name,
                p.wall.as_secs_f64(),
                p.cpu.as_secs_f64(),
                if p.ok { "" } else { "  (failed)" }
            );
        }
        println!(
            "  {:<width$}  {:>7.1} s  {:>7.1} s cpu",
            "total",
            wall.as_secs_f64(),
            cpu.as_secs_f64()
        );
    }
}

fn test(root: &Path, opts: &TestOptions, extra: &[String]) -> Result<()> {
    let mut phases = Phases::default();
    let started = Instant::now();
    let result = test_phases(root, opts, extra, &mut phases);
    phases.print();
    eprintln!(
        "cargo xtask test: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    result
}

fn test_phases(
    root: &Path,
    opts: &TestOptions,
    extra: &[String],
    phases: &mut Phases,
) -> Result<()> {
    // `cargo test` arguments, and after a second `--` the test binaries' own.
    let (cargo_args, bin_args) = match extra.iter().position(|a| a == "--") {
        Some(i) => (&extra[..i], &extra[i + 1..]),
        None => (extra, &[][..]),
    };
    phases.run("setup", setup)?;
    if !opts.no_lint {
        phases.run("lint", || {
            run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
            // The fuzz targets are a workspace of their own, outside `--all`.
            run(Command::new("cargo").args([
                "fmt",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--check",
            ]))?;
            run(Command::new("cargo").args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    }
    phases.run("cycles", || {
        let found = check_cycles(root)?;
        if found > 0 {
            if opts.allow_cycles {
                eprintln!(
                    "cycles: {found} import cycle(s), allowed by --allow-cycles / JIT_CYCLES=warn"
                );
            } else {
                bail!("{found} import cycle(s) (see above)");
            }
        }
        Ok(())
    })?;
    let binaries = phases.run("build", || {
        // The end-to-end tests run the real binaries (jit-agent, ...).
        run(Command::new("cargo").args(["build", "--bins"]))?;
        build_tests(root, cargo_args)
    })?;
    // The fuzz targets compile (their own target directory and flags) while the tests run,
    // at the lowest CPU and I/O priority so that the tests keep the machine: the tests spend
    // much of their time waiting on processes and sockets, and the build uses that time.
    let mut fuzz_build = if opts.fuzz_seconds > 0 {
        Some(Background::start(
            root,
            "fuzz-build",
            true,
            fuzz_build_command(root, FuzzBuild::Quick),
        )?)
    } else {
        None
    };
    // Every test binary on SQLite, and the controller's integration tests again on
    // PostgreSQL, in lanes (lanes.rs). The package test (a throwaway Debian root, mostly
    // unpacking and waiting on dpkg) runs beside them in the background.
    let mut jobs: Vec<Job> = binaries
        .iter()
        .map(|b| Job::binary(b, Backend::Sqlite, bin_args))
        .collect();
    jobs.push(doc_tests(cargo_args));
    if !opts.no_postgres {
        let controller: Vec<&TestBinary> = binaries.iter().filter(|b| b.controller).collect();
        if controller.is_empty() {
            eprintln!("tests (PostgreSQL): no controller test binary selected; skipped");
        }
        jobs.extend(
            controller
                .into_iter()
                .map(|b| Job::binary(b, Backend::Postgres, bin_args)),
        );
    }
    let mut package_test = if opts.no_postgres {
        None
    } else {
        // Through cargo, not this executable's path: the build phase may have replaced
        // the xtask binary this process runs from.
        let mut cmd = Command::new("cargo");
        cmd.args(["xtask", "package", "--test"]);
        Some(Background::start(root, "package-test", false, cmd)?)
    };
    let lanes = opts.lanes;
    let log_dir = target_dir(root).join("ci-logs").join("tests");
    let totals = phases.run(&format!("tests ({lanes} lanes)"), || {
        lanes::run(
            jobs,
            lanes,
            &log_dir,
            &std::sync::Mutex::new(std::io::stdout()),
        )
    })?;
    let mut summary = format!("summary: {}", totals.sqlite.describe());
    if !opts.no_postgres {
        summary.push_str(&format!(
            "; on PostgreSQL (controller): {}",
            totals.postgres.describe()
        ));
    }
    let failed: Vec<&String> = totals
        .sqlite
        .failed_jobs
        .iter()
        .chain(&totals.postgres.failed_jobs)
        .collect();
    if !failed.is_empty() {
        phases.mark_failed();
        println!("{summary}");
        for f in &failed {
            println!("failed: {f}");
        }
        bail!("{} test binaries failed (see above)", failed.len());
    }
    if totals.sqlite.passed == 0 {
        bail!("cargo test ran no test");
    }
    if !opts.no_postgres && binaries.iter().any(|b| b.controller) && totals.postgres.passed == 0 {
        bail!("no controller test ran on PostgreSQL");
    }
    phases.run("package", || match package_test.take() {
        Some(job) => job.wait(),
        None => package::test(root, package::Profile::Dev),
    })?;
    let runs = match fuzz_build.take() {
        Some(job) => phases.run("fuzz", || {
            job.wait()?;
            let all: Vec<&FuzzTarget> = FUZZ_TARGETS.iter().collect();
            // Side by side, one per core: each target is one single-threaded process.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            fuzz_targets(root, &all, opts.fuzz_seconds, FuzzBuild::Quick, cores)
        })?,
        None => Vec::new(),
    };
    if !runs.is_empty() {
        let crashed = runs.iter().filter(|r| r.crash.is_some()).count();
        let execs: u64 = runs.iter().map(|r| r.execs).sum();
        summary.push_str(&format!(
            "; fuzz: {} targets, {execs} executions, {crashed} crashed",
            runs.len()
        ));
    }
    println!("{summary}");
    fuzz_verdict(&runs)
}

/// Checks every lib and bin target of the workspace; prints the cycles; returns how many.
fn check_cycles(root: &Path) -> Result<usize> {
    let mut found = 0;
    let (mut modules, mut edges) = (0, 0);
    let targets = cycles::workspace_targets(root)?;
    for t in &targets {
        let report = cycles::check(t).with_context(|| format!("checking {}", t.label))?;
        modules += report.modules;
        edges += report.edges;
        found += report.cycles.len();
        print!("{}", report.render(root));
    }
    eprintln!(
        "cycles: {} targets, {modules} modules, {edges} dependencies, {found} cycle(s)",
        targets.len()
    );
    Ok(found)
}

/// Builds every test binary `cargo test` will run (so that its phase is the tests alone) and
/// returns them, in cargo's order.
fn build_tests(root: &Path, cargo_args: &[String]) -> Result<Vec<TestBinary>> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .args(cargo_args)
    .stdout(std::process::Stdio::piped());
    eprintln!("+ {cmd:?}");
    let out = cmd
        .spawn()
        .context("spawning cargo test --no-run")?
        .wait_with_output()?;
    if !out.status.success() {
        bail!("cargo test --no-run failed: {}", out.status);
    }
    let (controller, lab) = (root.join("controller"), root.join("tests"));
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest), Some(src)) = (
            msg["executable"].as_str(),
            msg["manifest_path"].as_str(),
            msg["target"]["src_path"].as_str(),
        ) else {
            continue;
        };
        let Some(package_dir) = Path::new(manifest).parent() else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let src = Path::new(src);
        let source = src.strip_prefix(root).unwrap_or(src).display().to_string();
        bins.push(TestBinary {
            source: if is_test {
                source
            } else {
                format!("{source} (unit tests)")
            },
            exe: PathBuf::from(exe),
            package_dir: package_dir.to_path_buf(),
            lab: package_dir == lab,
            controller: is_test && package_dir == controller,
        });
    }
    Ok(bins)
}

/// The doc tests as a job: `cargo test` with the build phase's arguments (`cargo test --doc`
/// would resolve features anew and rebuild half the workspace) and a name filter that only
/// doc tests match (`path - item (line N)`: no test function has a parenthesis in its name),
/// so that every other binary starts and runs nothing.
fn doc_tests(cargo_args: &[String]) -> Job {
    let mut cmd = Command::new("cargo");
    cmd.arg("test")
        .args(cargo_args)
        .args(["--", "(line "])
        .env("JIT_TEST_BACKEND", Backend::Sqlite.env_value());
    Job {
        label: "doc tests [SQLite]".into(),
        cmd,
        backend: Backend::Sqlite,
        lab: false,
    }
}
