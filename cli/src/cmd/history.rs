//! `jit history VM`: a VM's requests, newest first.

use clap::Args;
use jitgate_api::HistoryQuery;

use crate::client::Client;
use crate::cmd::requests::print_requests;
use crate::exit::R;
use crate::output::Out;

#[derive(Args)]
pub struct HistoryArgs {
    vm: String,
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

pub async fn run(c: &Client, a: &HistoryArgs, out: Out) -> R<()> {
    let q = HistoryQuery {
        limit: Some(i64::from(a.limit)),
    };
    let h = c.history(&a.vm, &q).await?;
    out.show_list(&h, print_requests)
}
