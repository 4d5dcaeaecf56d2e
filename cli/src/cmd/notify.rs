//! `jit notify`: where the controller sends notifications (sinks), their queues, and the
//! write-only secrets that sign webhook bodies (docs/notifications.md).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use jitgate_api::{DeadDeliveries, NewSink, SecretBody, SinkInfo, SinkStatus, SinkTarget};

use crate::client::Client;
use crate::exit::{Fail, R};
use crate::output::Out;
use crate::table::{Table, col, num, or_dash};

/// Most bytes read for a secret (the controller refuses more than 64 KiB).
const SECRET_MAX: u64 = 64 * 1024;

#[derive(Subcommand)]
pub enum NotifyCmd {
    /// Add a sink: checked at once (format, target, scope within yours, the named secret,
    /// the URL's host resolved and refused when it is loopback, private or link-local).
    Add(AddArgs),
    /// The sinks you can see (their URLs redacted: a Slack or Teams URL is a credential).
    List,
    /// Remove a sink made through the API, with its queued deliveries.
    Remove { name: String },
    /// Send an example event to a sink now and show how it went (outside the queue).
    Test { name: String },
    /// Each sink's queue: queued, retrying, delivered, dead, and the last failure.
    Status,
    /// Attempt dead deliveries again (of one sink, or of every sink you can see).
    Retry {
        /// Only this sink.
        #[arg(long)]
        sink: Option<String>,
    },
    /// Delete dead deliveries (of one sink, or of every sink you can see): given up on.
    Discard {
        /// Only this sink.
        #[arg(long)]
        sink: Option<String>,
    },
    /// The named secrets that sinks refer to: `set` (admin of scope *) and `list` (names).
    #[command(subcommand)]
    Secret(SecretCmd),
}

#[derive(Args)]
pub struct AddArgs {
    /// The sink's name (letters, digits, '.', '_', '-').
    name: String,
    /// webhook (signed JSON), slack (incoming webhook), teams (workflow webhook) or email.
    #[arg(long)]
    format: String,
    /// The receiver's https URL (webhook, slack, teams). Not `--url`: that one names the
    /// controller.
    #[arg(long, value_name = "URL", conflicts_with = "to")]
    endpoint: Option<String>,
    /// Email: the fixed recipients, comma-separated (requesters and approvers with an
    /// address are added per event).
    #[arg(long)]
    to: Option<String>,
    /// Only these event types (repeat or comma-separate; default: all), e.g.
    /// request.pending_approval,access.ending_soon
    #[arg(long, value_delimiter = ',')]
    events: Vec<String>,
    /// Only events about rg:GROUP or vm:NAME (default: every VM; needs an admin of scope *).
    #[arg(long)]
    scope: Option<String>,
    /// The named secret that signs webhook bodies (`jit notify secret set NAME`).
    #[arg(long)]
    secret: Option<String>,
    /// Only events addressed to this approver group (`group:NAME` in an approval rule).
    #[arg(long)]
    to_group: Option<String>,
}

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Write (or replace) a secret. The value is read from standard input (one trailing
    /// newline removed) or --from-file; never from the command line, where other users and
    /// shell history would see it. It is never shown again.
    Set {
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// The secrets' names.
    List,
}

pub async fn run(c: &Client, cmd: &NotifyCmd, out: Out) -> R<()> {
    match cmd {
        NotifyCmd::Add(a) => add(c, a, out).await,
        NotifyCmd::List => {
            let v = c.sinks().await?;
            out.show_list(&v, print_sinks)
        }
        NotifyCmd::Remove { name } => {
            c.remove_sink(name).await?;
            if !out.json {
                println!("sink {} removed", crate::text::safe(name));
            }
            Ok(())
        }
        NotifyCmd::Test { name } => {
            let r = c.test_sink(name).await?;
            out.show(&r, |t| {
                if t.delivered {
                    println!(
                        "sink {}: example {} delivered ({})",
                        crate::text::safe(&t.sink),
                        t.event_type,
                        t.status_class.as_deref().unwrap_or("-")
                    );
                } else {
                    println!(
                        "sink {}: example {} NOT delivered: {} {} {}",
                        crate::text::safe(&t.sink),
                        t.event_type,
                        t.kind,
                        t.status_class.as_deref().unwrap_or(""),
                        crate::text::safe(t.detail.as_deref().unwrap_or(""))
                    );
                }
            })?;
            if r.delivered {
                Ok(())
            } else {
                Err(Fail::error(format!(
                    "the example did not reach sink {name}"
                )))
            }
        }
        NotifyCmd::Status => {
            let v = c.notify_status().await?;
            out.show_list(&v, print_status)
        }
        NotifyCmd::Retry { sink } => {
            let r = c
                .notify_retry(&DeadDeliveries { sink: sink.clone() })
                .await?;
            out.show(&r, |r| {
                println!("{} dead deliveries queued again", r.deliveries)
            })
        }
        NotifyCmd::Discard { sink } => {
            let r = c
                .notify_discard(&DeadDeliveries { sink: sink.clone() })
                .await?;
            out.show(&r, |r| println!("{} dead deliveries deleted", r.deliveries))
        }
        NotifyCmd::Secret(SecretCmd::Set { name, from_file }) => {
            let value = read_secret(from_file.as_ref())?;
            c.put_secret(name, &SecretBody { value }).await?;
            if !out.json {
                println!("secret {} written", crate::text::safe(name));
            }
            Ok(())
        }
        NotifyCmd::Secret(SecretCmd::List) => {
            let v = c.secret_names().await?;
            out.show_list(&v, |names| {
                for n in names {
                    println!("{}", crate::text::safe(n));
                }
            })
        }
    }
}

async fn add(c: &Client, a: &AddArgs, out: Out) -> R<()> {
    let target = match (&a.endpoint, &a.to) {
        (Some(u), None) => u.clone(),
        (None, Some(t)) => t.clone(),
        _ => {
            return Err(Fail::usage(
                "give --endpoint URL (webhook, slack, teams) or --to ADDRESSES (email)",
            ));
        }
    };
    let body = NewSink {
        name: a.name.clone(),
        format: a.format.clone(),
        target,
        events: a.events.clone(),
        scope: a.scope.clone(),
        secret: a.secret.clone(),
        to_group: a.to_group.clone(),
    };
    let r = c.add_sink(&body).await?;
    out.show(&r, |s| print_sinks(std::slice::from_ref(s)))
}

/// The value of a secret, from a file or standard input; one trailing newline removed.
fn read_secret(file: Option<&PathBuf>) -> R<String> {
    let mut buf = Vec::new();
    let read = match file {
        Some(p) => std::fs::File::open(p)
            .and_then(|f| f.take(SECRET_MAX + 1).read_to_end(&mut buf))
            .map_err(|e| Fail::usage(format!("{}: {e}", p.display()))),
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("type the secret, then Enter and Ctrl-D:");
            }
            std::io::stdin()
                .take(SECRET_MAX + 1)
                .read_to_end(&mut buf)
                .map_err(|e| Fail::usage(format!("standard input: {e}")))
        }
    };
    read?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.is_empty() || buf.len() as u64 > SECRET_MAX {
        return Err(Fail::usage("a secret must be 1 byte to 64 KiB"));
    }
    String::from_utf8(buf).map_err(|_| Fail::usage("a secret must be UTF-8 text (e.g. hex)"))
}

const SINKS: Table = Table::new(&[
    col("NAME", 16),
    col("FORMAT", 8),
    col("SCOPE", 14),
    col("EVENTS", 24),
    col("SECRET", 10),
    col("CREATED BY", 20),
    col("TARGET", 0),
])
.gap("  ");

fn print_sinks(v: &[SinkInfo]) {
    if v.is_empty() {
        println!("no notification sinks (add one: jit notify add --help)");
        return;
    }
    SINKS.print_header();
    for s in v {
        let mut target = match &s.sink.target {
            SinkTarget::Url(u) => u.clone(),
            SinkTarget::Addresses(a) => a.join(", "),
        };
        if let Some(g) = &s.sink.to_group {
            target.push_str(&format!(" (to group {g})"));
        }
        SINKS.print_row(&[
            s.sink.name.clone(),
            s.sink.format.clone(),
            or_dash(s.sink.scope.clone()),
            if s.sink.events.is_empty() {
                "all".into()
            } else {
                s.sink.events.join(",")
            },
            or_dash(s.sink.secret.clone()),
            s.created_by.clone(),
            target,
        ]);
    }
}

const STATUS: Table = Table::new(&[
    col("SINK", 16),
    num("QUEUED", 7),
    num("RETRYING", 9),
    num("IN FLIGHT", 9),
    num("DELIVERED", 10),
    num("DEAD", 6),
    col("OLDEST WAITING", 20),
    col("LAST DELIVERED", 20),
    col("LAST FAILURE", 0),
])
.gap("  ");

fn print_status(v: &[SinkStatus]) {
    if v.is_empty() {
        println!("no notification sinks");
        return;
    }
    STATUS.print_header();
    for s in v {
        let failure = s.last_failure.as_ref().map(|f| {
            format!(
                "{} {} {} {}",
                f.time_utc,
                f.kind,
                f.status_class.as_deref().unwrap_or(""),
                f.detail.as_deref().unwrap_or("")
            )
        });
        STATUS.print_row(&[
            s.name.clone(),
            s.queued.to_string(),
            s.retrying.to_string(),
            s.in_flight.to_string(),
            s.delivered.to_string(),
            s.dead.to_string(),
            or_dash(s.oldest_pending_utc.clone()),
            or_dash(s.last_delivered_utc.clone()),
            or_dash(failure),
        ]);
    }
}
