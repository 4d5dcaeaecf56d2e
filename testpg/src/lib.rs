//! Throwaway PostgreSQL clusters for tests (see docs/testing.md).
//!
//! [`Cluster::start`] runs `initdb` in a new temporary directory and starts a server that
//! listens on a unix socket in a private directory only; [`Builder::tls`] adds `ssl = on`
//! with a server certificate signed by a test CA and a listener on 127.0.0.1 at a free port,
//! so that clients can be tested with `sslmode=verify-full` and the CA file. Start to ready
//! takes about 2 s (initdb is most of it).
//!
//! PostgreSQL refuses to run as root. When the test runs as root, the server runs as
//! `JIT_TESTPG_USER`, else `postgres` (created by Debian's package), else `nobody`; the
//! temporary directory belongs to that user. Otherwise it runs as the test's own user.
//!
//! Nothing outlives the test:
//! - dropping a [`Cluster`] stops the server (immediate mode) and removes the directory,
//!   also while a panic unwinds;
//! - a watchdog process (`sh`, in its own process group) holds the read end of a pipe whose
//!   write end only the test process has. When the test process dies in any way (SIGKILL,
//!   `panic = "abort"`, Ctrl-C) the pipe closes, and the watchdog stops the server and
//!   removes the directory. That is also how the per-process [`Cluster::shared`] cluster,
//!   held in a static that is never dropped, goes away after the test binary exits.
//!
//! [`Cluster::create_database`] makes a fresh database (from `template1`, ~0.1 s), so tests
//! share one server without sharing data. [`Cluster::stop`], [`Cluster::start_again`],
//! [`Cluster::restart`] and [`Cluster::crash`] stop and start the server mid-test: only on
//! a cluster of the test's own, never on the shared one.
//!
//! The server binaries are found in `JIT_TESTPG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian), else `PATH`. `cargo xtask setup` installs them.
//! Settings favour speed over durability (`fsync = off`, `full_page_writes = off`): killing
//! the server loses no acknowledged commit, a crash of the machine would. [`Builder::durable`]
//! keeps PostgreSQL's defaults.

mod cluster;
mod install;
mod tls;

pub use cluster::{Builder, Cluster, Database};

/// What can go wrong starting or driving a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found ({searched}): \
         run `cargo xtask setup` (Debian package postgresql) or set JIT_TESTPG_BIN"
    )]
    NotInstalled { searched: String },
    #[error("no OS user to run PostgreSQL as (it refuses root): tried {0}; set JIT_TESTPG_USER")]
    NoUser(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
    #[error("generating the TLS certificates: {0}")]
    Tls(#[from] rcgen::Error),
    #[error("the shared test cluster did not start: {0}")]
    Shared(String),
    #[error("not a valid database name: {0:?}")]
    Name(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
