//! `jit history VM`: a VM's requests, newest first, with the approvals of those that had
//! any.

use clap::Args;
use jitgate_api::HistoryQuery;

use crate::client::Client;
use crate::cmd::requests::{print_approvals, print_requests};
use crate::exit::R;
use crate::output::Out;
use crate::text::safe;

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
    out.show_list(&h, |reqs| {
        print_requests(reqs);
        // Who decided what, for the requests that went through approval.
        for r in reqs.iter().filter(|r| !r.approvals.is_empty()) {
            println!("request {}:", safe(&r.id));
            print_approvals(r);
        }
    })
}
