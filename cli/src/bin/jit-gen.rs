//! `jit-gen DIR`: writes jit's man pages (`DIR/man/jit.1`, `DIR/man/jit-request.1`, ... one
//! per command and subcommand) and its shell completions (`DIR/completions/jit.bash`, `_jit`
//! for zsh, `jit.fish`, `_jit.ps1`, `jit.elv`), all generated from the clap definition the
//! `jit` binary runs, so they cannot drift from it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use clap_complete::Shell;

/// Writes jit's man pages and shell completions into a directory.
#[derive(Parser)]
#[command(name = "jit-gen", version)]
struct Args {
    /// Where to write `man/` and `completions/` (created if missing).
    dir: PathBuf,
}

fn main() -> ExitCode {
    let a = Args::parse();
    match generate(&a.dir) {
        Ok(n) => {
            println!("wrote {n} files under {}", a.dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jit-gen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(dir: &std::path::Path) -> std::io::Result<usize> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = jitgate_cli::command();
    cmd.build();
    let mut n = 0;
    // clap_mangen names each page after its command path: jit.1, jit-policy-set.1, ...
    clap_mangen::generate_to(cmd.clone(), &man)?;
    // clap's built-in `help` subcommands (jit-audit-help-verify.1, ...) only repeat the
    // pages of the commands they name: leave them out.
    for entry in std::fs::read_dir(&man)? {
        let path = entry?.path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem.split('-').any(|part| part == "help") {
            std::fs::remove_file(&path)?;
        }
    }
    n += std::fs::read_dir(&man)?.count();
    for shell in Shell::value_variants() {
        clap_complete::generate_to(*shell, &mut cmd, "jit", &completions)?;
        n += 1;
    }
    Ok(n)
}
