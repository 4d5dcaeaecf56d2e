//! How `jit-controller` writes its log: to stderr, as text or as one JSON object per line
//! (tracing-subscriber's json formatter: `timestamp`, `level`, `target`, `fields` with
//! `message` and the event's structured fields, `span`), through a tracing `EnvFilter`.

use tracing_subscriber::EnvFilter;

jitgate_api::wire_enum! {
    /// `log_format` in controller.toml, `--log-format` on the command line.
    #[derive(Default)]
    pub enum LogFormat("log format") {
        /// Human-readable lines (the default).
        #[default]
        Text = "text",
        /// One JSON object per line, for log collectors.
        Json = "json",
    }
}

/// The filter when neither `JIT_LOG` nor `log_filter` says.
pub const DEFAULT_FILTER: &str = "info";

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed")]
    AlreadySet,
}

/// Installs the process's logger: `filter` (EnvFilter syntax) or [`DEFAULT_FILTER`].
pub fn init(format: LogFormat, filter: Option<&str>) -> Result<(), LogError> {
    let filter = filter.unwrap_or(DEFAULT_FILTER);
    let f = EnvFilter::try_new(filter).map_err(|source| LogError::Filter {
        filter: filter.to_string(),
        source,
    })?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    }
    .map_err(|_| LogError::AlreadySet)
}
