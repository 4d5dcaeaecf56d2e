//! The fuzz targets: building them (cargo-fuzz), running each for a while, the verdict.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

use crate::{run, target_dir};

/// A libFuzzer target in fuzz/fuzz_targets and the largest input it is given.
pub(crate) struct FuzzTarget {
    pub(crate) name: &'static str,
    pub(crate) max_len: usize,
}

pub(crate) const FUZZ_TARGETS: &[FuzzTarget] = &[
    // Frames may be 1 MiB; 64 KiB covers every message shape and a stream of several.
    FuzzTarget {
        name: "frame",
        max_len: 64 * 1024,
    },
    FuzzTarget {
        name: "signed",
        max_len: 4 * 1024,
    },
    FuzzTarget {
        name: "agent_config",
        max_len: 16 * 1024,
    },
    // One byte over the controller's default body limit (64 KiB), to reach the refusal.
    FuzzTarget {
        name: "request_json",
        max_len: 64 * 1024 + 1,
    },
    FuzzTarget {
        name: "audit_reader",
        max_len: 64 * 1024,
    },
];

/// What one fuzz target's run did.
pub(crate) struct FuzzRun {
    pub(crate) name: &'static str,
    pub(crate) execs: u64,
    pub(crate) seconds: f64,
    /// The input that crashed it.
    pub(crate) crash: Option<String>,
}

/// How the fuzz targets are built.
#[derive(Clone, Copy)]
pub(crate) enum FuzzBuild {
    /// For the short runs in `cargo xtask test`: unoptimized, no sanitizer (panics, overflow
    /// checks, the RSS limit and the timeout still apply). Builds in a fraction of the time.
    Quick,
    /// For `cargo xtask fuzz`: optimized, with AddressSanitizer and debug assertions.
    Thorough,
}

/// Builds every fuzz target (one `cargo fuzz build`: the dependencies are built once), then
/// runs each for `seconds`. The corpus grows in fuzz/corpus/NAME (not committed), starting
/// from the committed seeds in fuzz/seeds/NAME.
pub(crate) fn fuzz(
    root: &Path,
    targets: &[&FuzzTarget],
    seconds: u64,
    build: FuzzBuild,
) -> Result<Vec<FuzzRun>> {
    let started = std::time::Instant::now();
    run(&mut fuzz_build_command(root, build))?;
    eprintln!(
        "fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    fuzz_targets(root, targets, seconds, build, 1)
}

/// `cargo fuzz build` of every target (the dependencies are built once).
pub(crate) fn fuzz_build_command(root: &Path, build: FuzzBuild) -> Command {
    let flags: &[&str] = match build {
        FuzzBuild::Quick => &["--dev", "--sanitizer", "none"],
        FuzzBuild::Thorough => &["--release", "--debug-assertions"],
    };
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "build"])
        .args(flags)
        .arg("--target-dir")
        .arg(target_dir(root).join("fuzz"));
    cmd
}

/// Runs each built fuzz target for `seconds`, `at_once` of them side by side (each target is
/// one single-threaded process), stopping after the first group with a crash.
pub(crate) fn fuzz_targets(
    root: &Path,
    targets: &[&FuzzTarget],
    seconds: u64,
    build: FuzzBuild,
    at_once: usize,
) -> Result<Vec<FuzzRun>> {
    let profile = match build {
        FuzzBuild::Quick => "debug",
        FuzzBuild::Thorough => "release",
    };
    let bin_dir = target_dir(root)
        .join("fuzz")
        .join("x86_64-unknown-linux-gnu")
        .join(profile);
    let mut runs = Vec::new();
    for group in targets.chunks(at_once.max(1)) {
        let results: Vec<Result<FuzzRun>> = std::thread::scope(|s| {
            let running: Vec<_> = group
                .iter()
                .map(|t| s.spawn(|| fuzz_one(root, &bin_dir, t, seconds)))
                .collect();
            running
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a fuzz runner panicked")))
                })
                .collect()
        });
        let mut crashed = false;
        for r in results {
            let r = r?;
            crashed |= record(r, &mut runs);
        }
        if crashed {
            break;
        }
    }
    Ok(runs)
}

/// Prints a run's verdict and keeps it; true when it crashed.
fn record(r: FuzzRun, runs: &mut Vec<FuzzRun>) -> bool {
    match &r.crash {
        None => println!(
            "fuzz {}: {} executions in {:.0} s, no crash",
            r.name, r.execs, r.seconds
        ),
        Some(input) => println!(
            "fuzz {}: CRASHED after {} executions in {:.0} s; input: {input} \
             (reproduce: cargo +nightly fuzz run {} {input})",
            r.name, r.execs, r.seconds, r.name
        ),
    }
    let crashed = r.crash.is_some();
    runs.push(r);
    crashed
}

pub(crate) fn fuzz_one(
    root: &Path,
    bin_dir: &Path,
    t: &FuzzTarget,
    seconds: u64,
) -> Result<FuzzRun> {
    use std::io::{BufRead, BufReader};
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("corpus").join(t.name);
    let artifacts = fuzz.join("artifacts").join(t.name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = Command::new(bin_dir.join(t.name));
    cmd.arg(&corpus)
        .arg(fuzz.join("seeds").join(t.name))
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={}", t.max_len))
        .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let dict = fuzz.join("dicts").join(format!("{}.dict", t.name));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    eprintln!("+ {cmd:?}");
    let started = std::time::Instant::now();
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning fuzz target {} (built?)", t.name))?;
    let stderr = child.stderr.take().context("fuzz stderr")?;
    let (mut execs, mut crash, mut tail) = (0u64, None, Vec::new());
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            execs = n.trim().parse().unwrap_or(0);
        }
        // "artifact_prefix='...'; Test unit written to PATH"
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            crash = Some(path.trim().to_string());
        }
        // Keep the report (panic message, stack) for a crash; progress lines are noise.
        if !line.starts_with('#') {
            tail.push(line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        for l in &tail {
            eprintln!("{l}");
        }
        crash.get_or_insert_with(|| format!("(none written; {} exited: {status})", t.name));
    }
    Ok(FuzzRun {
        name: t.name,
        execs,
        seconds: started.elapsed().as_secs_f64(),
        crash,
    })
}

pub(crate) fn fuzz_verdict(runs: &[FuzzRun]) -> Result<()> {
    match runs.iter().find_map(|r| Some((r.name, r.crash.as_ref()?))) {
        Some((name, input)) => bail!("fuzz target {name} crashed on {input}"),
        None => Ok(()),
    }
}
