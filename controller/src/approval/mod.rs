//! The approval engine (docs/approvals.md): requests under a policy's approval rules wait in
//! `PendingApproval` until every rule's stages are complete, an approver denies, the
//! requester cancels, or the timeout ends them.
//!
//! - [`rule`]: a validated rule and the pure arithmetic of stages (who counts, for what).
//! - [`decide`]: approve, deny, cancel and time out, each in one transaction that locks the
//!   request and recounts, so racing decisions have exactly one outcome.
//! - [`report`]: the requests waiting for a caller's decision, and every decision made.

pub mod decide;
pub mod report;
pub mod rule;
