//! The jitgate agent library: the data plane API that `jit-agent` builds on.
//!
//! - [`Dataplane`] loads or adopts the pinned XDP program and maps, attaches to interfaces,
//!   sets the protected ports and writes grants.
//! - [`cover`] computes, for overlapping grants, the value each map entry must hold.
//! - [`grant_table`] holds every grant the daemon applied, compactly, and answers which grant
//!   ends next and which one covers a source.
//! - [`daemon`] is `jit-agent run`; [`admin`] its local socket's protocol and client.
//! - [`channel`] is the connection to a controller; [`endpoints`] which controller it dials.
//! - [`clock`] converts UTC grant ends into the kernel's CLOCK_BOOTTIME.
//! - [`events`] decodes the ring-buffer events.
//! - [`link`] tells Ethernet devices from tunnels (which program runs where).
//! - [`netns`] runs code inside a network namespace (attaching there, tests).
//! - [`schedule`] holds booked grants, out of the maps, until their start.

pub mod admin;
pub mod audit;
pub mod bpffs;
pub mod channel;
pub mod clock;
pub mod config;
pub mod cover;
pub mod daemon;
pub mod dataplane;
pub mod endpoints;
pub mod enroll;
pub mod error;
pub mod events;
pub mod grant;
pub mod grant_table;
mod intern;
pub mod journal;
pub mod keyring;
pub mod link;
pub mod netns;
pub mod schedule;
mod slab;
pub mod sockdiag;
pub mod state_file;

pub use clock::BootInstant;
pub use dataplane::{
    AttachMode, Attachment, Counters, Dataplane, DataplaneOptions, MapLimits, TestRun, XDP_DROP,
    XDP_PASS, remove_pins,
};
pub use error::Error;
pub use events::{DataplaneEvent, EventStream};
pub use grant::{GrantId, GrantSpec};
pub use link::LinkLayer;
