//! Types shared by the jitgate XDP program (`jitgate-ebpf`) and user space.
//!
//! This crate is the single place where the layout of every map, key, value and event record
//! is defined. The kernel program and the agent both compile against it, so they cannot drift
//! apart. It is `#![no_std]` so that the kernel side can use it; the `user` feature adds the
//! `aya::Pod` markers that user space needs to read and write the maps.
#![no_std]

pub mod counters;
pub mod event;
pub mod limit;
pub mod maps;
pub mod net;
pub mod policy;
#[cfg(feature = "serde")]
mod serde_impl;

pub use counters::Counter;
pub use event::{Event, EventKind};
pub use limit::{MaxConnections, MaxConnectionsError};
pub use maps::*;
pub use net::{ParseError, Port, Protocol, SourcePrefix};
pub use policy::{OnExpiry, ProtectedPort, ProtectedPortError};
