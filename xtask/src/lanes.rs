//! The test binaries of `cargo xtask test`, run side by side in lanes.
//!
//! Run one after the other (as `cargo test` does), the tests kept a 2-core machine less than
//! half busy: most of their time is spent waiting on processes, sockets and timers. So each
//! test binary is a job, and several lanes take jobs from one queue. The root tests in network
//! namespaces (the `jitgate-tests` crate) stay one at a time, in the first lane, as before:
//! they load XDP programs and pin maps, and were written to have the host's namespaces to
//! themselves. Every other binary, on either backend, may run beside them.
//!
//! A job's output (stdout and stderr) goes to a log file and is printed whole when the job
//! ends, so that the CI log reads one binary at a time.

use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// The database the controller's tests run on (`JIT_TEST_BACKEND`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn env_value(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// One test binary as `cargo test --no-run` built it.
#[derive(Clone, Debug)]
pub struct TestBinary {
    /// Its source, relative to the workspace (`controller/tests/api.rs`).
    pub source: String,
    pub exe: PathBuf,
    /// The package's directory: `cargo test` runs a binary there.
    pub package_dir: PathBuf,
    /// A root test in network namespaces (one at a time, see the module docs).
    pub lab: bool,
    /// One of the controller's integration tests (run again on PostgreSQL).
    pub controller: bool,
}

/// A command to run as one job: a test binary on a backend, or the doc tests.
pub struct Job {
    pub label: String,
    pub cmd: Command,
    pub backend: Backend,
    pub lab: bool,
}

impl Job {
    /// `bin` on `backend`, with the test binaries' own arguments.
    pub fn binary(bin: &TestBinary, backend: Backend, args: &[String]) -> Job {
        let mut cmd = Command::new(&bin.exe);
        cmd.args(args)
            .current_dir(&bin.package_dir)
            .env("CARGO_MANIFEST_DIR", &bin.package_dir)
            .env("JIT_TEST_BACKEND", backend.env_value());
        Job {
            label: format!("{} [{}]", bin.source, backend.label()),
            cmd,
            backend,
            lab: bin.lab,
        }
    }
}

/// What the test binaries of one backend reported, added up.
#[derive(Default, Debug)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// The jobs that failed (a failed test, or a binary that did not exit 0).
    pub failed_jobs: Vec<String>,
}

impl TestCounts {
    pub fn ok(&self) -> bool {
        self.failed_jobs.is_empty()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }

    /// Adds the counts of libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...`
    /// lines in `output`.
    fn add_output(&mut self, output: &str) {
        for line in output.lines() {
            let Some(rest) = line.strip_prefix("test result: ") else {
                continue;
            };
            for part in rest.split(['.', ';']) {
                let mut it = part.split_whitespace();
                if let (Some(n), Some(what)) = (it.next(), it.next())
                    && let Ok(n) = n.parse::<u64>()
                {
                    match what {
                        "passed" => self.passed += n,
                        "failed" => self.failed += n,
                        "ignored" => self.ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The totals per backend once every job has run.
#[derive(Default, Debug)]
pub struct Totals {
    pub sqlite: TestCounts,
    pub postgres: TestCounts,
}

impl Totals {
    fn of(&mut self, backend: Backend) -> &mut TestCounts {
        match backend {
            Backend::Sqlite => &mut self.sqlite,
            Backend::Postgres => &mut self.postgres,
        }
    }
}

/// The jobs not yet started: the lab jobs are taken by lane 0 only, first.
struct Queue {
    lab: VecDeque<Job>,
    other: VecDeque<Job>,
}

impl Queue {
    fn take(&mut self, lane: usize) -> Option<Job> {
        if lane == 0
            && let Some(job) = self.lab.pop_front()
        {
            return Some(job);
        }
        self.other.pop_front()
    }
}

/// Runs every job to its end (a failure does not stop the others: the log then names every
/// failing binary), `lanes` at a time, and adds up what they reported. Each job's output goes
/// to a file under `log_dir` and is written whole to `out` when it ends.
pub fn run<W: Write + Send>(
    jobs: Vec<Job>,
    lanes: usize,
    log_dir: &Path,
    out: &Mutex<W>,
) -> Result<Totals> {
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let (lab, other): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.lab);
    let queue = Mutex::new(Queue {
        lab: lab.into(),
        other: other.into(),
    });
    let totals = Mutex::new(Totals::default());
    let counter = Mutex::new(0usize);
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for lane in 0..lanes.max(1) {
            let (queue, totals, counter, errors) = (&queue, &totals, &counter, &errors);
            s.spawn(move || {
                loop {
                    let Some(job) = lock(queue).take(lane) else {
                        break;
                    };
                    let n = {
                        let mut c = lock(counter);
                        *c += 1;
                        *c
                    };
                    let log = log_dir.join(format!("{n:03}.log"));
                    match run_job(job, lane, &log, out) {
                        Ok((backend, label, counts)) => {
                            let mut t = lock(totals);
                            let into = t.of(backend);
                            into.passed += counts.passed;
                            into.failed += counts.failed;
                            into.ignored += counts.ignored;
                            if !counts.ok() {
                                into.failed_jobs.push(label);
                            }
                        }
                        Err(e) => lock(errors).push(e),
                    }
                }
            });
        }
    });
    if let Some(e) = lock(&errors).pop() {
        return Err(e);
    }
    totals
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a test lane panicked"))
}

/// A poisoned lock only means another lane panicked; the data is still what it was.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn run_job<W: Write>(
    mut job: Job,
    lane: usize,
    log: &Path,
    out: &Mutex<W>,
) -> Result<(Backend, String, TestCounts)> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = file.try_clone()?;
    job.cmd
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err);
    eprintln!("+ lane {lane}: {} ({:?})", job.label, job.cmd.get_program());
    let started = Instant::now();
    let status = job
        .cmd
        .status()
        .with_context(|| format!("spawning {:?}", job.cmd))?;
    let took = started.elapsed().as_secs_f64();
    let output = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    let output = String::from_utf8_lossy(&output);
    let mut counts = TestCounts::default();
    counts.add_output(&output);
    if !status.success() || counts.failed > 0 {
        counts.failed_jobs.push(job.label.clone());
    }
    // One job's output at a time, whole.
    let mut out = lock(out);
    let _ = writeln!(
        out,
        "     Running {} (lane {lane}, {took:.1} s{})",
        job.label,
        if status.success() {
            String::new()
        } else {
            format!(", {status}")
        }
    );
    let _ = out.write_all(output.as_bytes());
    let _ = out.flush();
    Ok((job.backend, job.label, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(label: &str, lab: bool) -> Job {
        Job {
            label: label.into(),
            cmd: Command::new("true"),
            backend: Backend::Sqlite,
            lab,
        }
    }

    #[test]
    fn only_the_first_lane_takes_lab_jobs_and_it_takes_them_first() {
        let mut q = Queue {
            lab: [job("lab-a", true), job("lab-b", true)].into(),
            other: [job("x", false), job("y", false)].into(),
        };
        assert_eq!(q.take(1).map(|j| j.label), Some("x".into()));
        assert_eq!(q.take(0).map(|j| j.label), Some("lab-a".into()));
        assert_eq!(q.take(1).map(|j| j.label), Some("y".into()));
        assert!(q.take(1).is_none(), "lane 1 never takes a lab job");
        assert_eq!(q.take(0).map(|j| j.label), Some("lab-b".into()));
        assert!(q.take(0).is_none());
    }

    #[test]
    fn counts_add_up_libtest_result_lines() {
        let mut c = TestCounts::default();
        c.add_output(
            "running 3 tests\ntest a ... ok\n\
             test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
             finished in 0.01s\n\
             test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; \
             finished in 1.00s\n",
        );
        assert_eq!((c.passed, c.failed, c.ignored), (4, 2, 1));
    }

    #[test]
    fn a_failing_binary_is_named_and_others_still_run() {
        let dir = std::env::temp_dir().join(format!("xtask-lanes-{}", std::process::id()));
        let mut bad = Command::new("sh");
        bad.args([
            "-c",
            "echo 'test result: ok. 2 passed; 0 failed; 0 ignored'; exit 3",
        ]);
        let mut good = Command::new("sh");
        good.args([
            "-c",
            "echo 'test result: ok. 5 passed; 0 failed; 0 ignored'",
        ]);
        let jobs = vec![
            Job {
                label: "bad".into(),
                cmd: bad,
                backend: Backend::Postgres,
                lab: true,
            },
            Job {
                label: "good".into(),
                cmd: good,
                backend: Backend::Sqlite,
                lab: false,
            },
        ];
        let out = Mutex::new(Vec::new());
        let t = run(jobs, 2, &dir, &out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let printed = String::from_utf8(out.into_inner().unwrap()).unwrap();
        assert!(printed.contains("Running bad (lane 0, "), "{printed}");
        assert!(printed.contains("exit status: 3"), "{printed}");
        assert_eq!(t.sqlite.passed, 5);
        assert!(t.sqlite.ok());
        assert_eq!(t.postgres.passed, 2);
        assert_eq!(t.postgres.failed_jobs, vec!["bad".to_string()]);
    }
}
