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
    col("LIMIT", 5),
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
            CONNECTIONS.print_row(&cells(x));
        }
    })
}

/// One connection's row. LIMIT: the most new connections its grant admits (`-`: unlimited,
/// or a grant the controller did not issue).
fn cells(x: &Connection) -> [String; 8] {
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
    [
        x.time_utc.clone(),
        x.outcome.to_string(),
        or_dash(x.source.as_deref()),
        format!("{}/{}", or_dash(x.port), or_dash(x.protocol.as_deref())),
        or_dash(x.requestor.as_deref()),
        request,
        or_dash(x.max_connections.map(|m| m.get())),
        or_dash(why.as_deref()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api::MaxConnections;

    #[test]
    fn a_row_names_the_grants_connection_limit() {
        let c = Connection {
            max_connections: MaxConnections::new(3),
            ..jitgate_api::agents::example_connection()
        };
        assert_eq!(cells(&c)[6], "3");
        assert_eq!(cells(&c)[7], "deploy");
        let unlimited = Connection {
            max_connections: None,
            ..c
        };
        assert_eq!(cells(&unlimited)[6], "-");
    }
}
