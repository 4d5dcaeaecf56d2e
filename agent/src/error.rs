//! The data plane's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pin directory {path}: {reason}")]
    PinDir { path: PathBuf, reason: String },

    #[error(
        "pinned maps in {pin_dir} have layout version {found}, this agent uses {expected}; \
         run `jit-agent detach` with the old version first"
    )]
    LayoutMismatch {
        pin_dir: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error("loading the XDP program: {0}")]
    Load(#[from] aya::EbpfError),

    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),

    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },

    #[error("map {0} missing from the object")]
    MissingMap(&'static str),

    #[error("program {0} missing from the object")]
    MissingProgram(&'static str),

    #[error("interface {0} not found")]
    NoSuchInterface(String),

    #[error("attaching to {iface}: driver mode failed ({driver}); generic mode failed ({generic})")]
    Attach {
        iface: String,
        driver: String,
        generic: String,
    },

    #[error("pinning {path}: {reason}")]
    Pin { path: PathBuf, reason: String },

    #[error(
        "{iface} has link type {arphrd} (ARPHRD), whose packet layout the XDP program does not \
         parse; a GRE device without a fixed remote shows its outer headers as a link layer"
    )]
    UnsupportedLink { iface: String, arphrd: u16 },

    #[error("{0} is not attached")]
    NotAttached(String),

    #[error("unknown grant {0}")]
    UnknownGrant(crate::GrantId),

    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
        move |source| Error::Map { map, source }
    }
}
