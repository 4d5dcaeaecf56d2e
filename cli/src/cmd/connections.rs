//! `jit connections VM`: who connected to a VM, from where, under which request (from the
//! records its agents delivered; `--denied` adds refused attempts).

use clap::Args;
use jitgate_api::{Connection, ConnectionOutcome, Format, ViewQuery};

use crate::client::Client;
use crate::cmd::Window;
use crate::exit::R;
use crate::output::{ExportKind, Out, print_export};
use crate::table::{Table, col, or_dash};

#[derive(Args)]
pub struct ConnectionsArgs {
    /// The VM.
    vm: String,
    /// Also list refused attempts (sources without an active grant).
    #[arg(long)]
    denied: bool,
    #[command(flatten)]
    window: Window,
    /// Export as CSV.
    #[arg(long)]
    csv: bool,
}

const CONNECTIONS: Table = Table::new(&[
    col("TIME (UTC)", 24),
    col("OUTCOME", 8),
    col("SOURCE", 40),
    col("PORT", 9),
    col("REQUESTOR", 20),
    col("REQUEST", 36),
    col("JUSTIFICATION / REASON", 0),
]);

pub async fn run(c: &Client, a: &ConnectionsArgs, out: Out) -> R<()> {
    let mut q = ViewQuery {
        from: a.window.since.clone(),
        to: a.window.until.clone(),
        limit: a.window.limit(),
        denied: a.denied,
        ..ViewQuery::default()
    };
    if a.csv {
        q.format = Some(Format::Csv);
        return print_export(&c.connections_text(&a.vm, &q).await?, ExportKind::Csv);
    }
    let list = c.connections(&a.vm, &q).await?;
    out.show_list(&list, |list: &[Connection]| {
        CONNECTIONS.print_header();
        for x in list {
            let request = match (&x.request_id, &x.grant_origin) {
                (Some(r), _) => r.clone(),
                (None, Some(o)) => format!("({o} grant)"),
                (None, None) => "-".into(),
            };
            let why = if x.outcome == ConnectionOutcome::Denied {
                &x.reason
            } else {
                &x.justification
            };
            CONNECTIONS.print_row(&[
                x.time_utc.clone(),
                x.outcome.to_string(),
                or_dash(x.source.as_deref()),
                format!("{}/{}", or_dash(x.port), or_dash(x.protocol.as_deref())),
                or_dash(x.requestor.as_deref()),
                request,
                or_dash(why.as_deref()),
            ]);
        }
    })
}
