//! `jit apply -f FILE [--dry-run] [--prune]` and `jit export`: policies as code
//! (docs/operations.md "Policies as code"). The file is TOML in the controller's declaration
//! format (`jitgate_api::Document`); it is parsed here, so that a mistake is reported with
//! its line and column before anything is sent, and checked again by the controller, which
//! plans and applies.

use std::path::{Path, PathBuf};

use clap::Args;
use jitgate_api::{ApplyBody, Document, Plan, PlanAction};

use crate::client::Client;
use crate::exit::{Fail, R};
use crate::output::{ExportKind, Out, print_export};
use crate::text::safe;

#[derive(Args)]
pub struct ApplyArgs {
    /// The declaration file (TOML; `jit export` writes one).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Show the plan only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also delete what the file does not declare (only what you may manage).
    #[arg(long)]
    prune: bool,
}

impl ApplyArgs {
    /// The file, read and parsed (with `target_file`s read): before any controller is
    /// contacted.
    pub fn body(&self) -> R<ApplyBody> {
        Ok(ApplyBody {
            document: read(&self.file)?,
            dry_run: self.dry_run,
            prune: self.prune,
        })
    }
}

/// Reads a declaration file: TOML errors as `FILE:LINE:COLUMN: message`.
pub fn read(path: &Path) -> R<Document> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::usage(format!("{}: {e}", path.display())))?;
    let mut doc: Document = toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((1, 1));
        Fail::usage(format!(
            "{}:{line}:{col}: {}",
            path.display(),
            e.message().trim_end()
        ))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for s in &mut doc.sinks {
        let Some(file) = s.target_file.take() else {
            continue;
        };
        if s.target.is_some() {
            return Err(Fail::usage(format!(
                "{}: sink {}: give target or target_file, not both",
                path.display(),
                s.name
            )));
        }
        let p = dir.join(&file);
        let t = std::fs::read_to_string(&p)
            .map_err(|e| Fail::usage(format!("sink {}: {}: {e}", s.name, p.display())))?;
        s.target = Some(t.trim_end_matches(['\n', '\r']).to_string());
    }
    Ok(doc)
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub async fn apply(c: &Client, body: ApplyBody, out: Out) -> R<()> {
    let dry_run = body.dry_run;
    let plan = c.apply(&body).await?;
    out.show(&plan, |p| print_plan(p, dry_run))
}

fn print_plan(p: &Plan, dry_run: bool) {
    if p.changes.is_empty() {
        println!("no changes");
        return;
    }
    for c in &p.changes {
        let mark = match c.action {
            PlanAction::Create => "+",
            PlanAction::Change => "~",
            PlanAction::Delete => "-",
            PlanAction::Other(_) => "?",
        };
        println!(
            "{mark} {} {} {}",
            safe(c.action.as_str()),
            safe(c.kind.as_str()),
            safe(&c.name)
        );
        for f in &c.fields {
            let side = |v: &Option<String>| safe(v.as_deref().unwrap_or("(none)")).into_owned();
            match c.action {
                PlanAction::Create => println!("    {}: {}", safe(&f.field), side(&f.after)),
                PlanAction::Delete => println!("    {}: {}", safe(&f.field), side(&f.before)),
                _ => println!(
                    "    {}: {} -> {}",
                    safe(&f.field),
                    side(&f.before),
                    side(&f.after)
                ),
            }
        }
    }
    let n = p.changes.len();
    if p.applied {
        println!("{n} change(s) applied");
    } else if dry_run {
        println!("{n} change(s) planned; dry run: nothing changed");
    } else {
        println!("{n} change(s) planned; nothing applied");
    }
}

/// `jit export`: the state you can see, as a declaration file on stdout (byte for byte into
/// a file or pipe; terminal-safe on a terminal).
pub async fn export(c: &Client, out: Out) -> R<()> {
    let doc = c.export().await?;
    if out.json {
        return crate::output::print_raw(doc.text());
    }
    let text = toml::to_string(&*doc)
        .map_err(|e| Fail::error(format!("writing the declaration as TOML: {e}")))?;
    let header = "# jitgate declaration (jit export): apply with `jit apply -f FILE`.\n\
         # URL sink targets are not exported (they may be credentials): a sink without\n\
         # target keeps its own; give target_file = \"PATH\" to set one from a file.\n\n";
    print_export(&format!("{header}{text}"), ExportKind::Toml)
}
