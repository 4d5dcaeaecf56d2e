//! How `jit-controller` writes its log: to stderr, as text or as one JSON object per line
//! (tracing-subscriber's json formatter: `timestamp`, `level`, `target`, `fields` with
//! `message` and the event's structured fields, `span`), through a tracing `EnvFilter` that
//! a running controller replaces on SIGHUP ([`LogControl::set_filter`]).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

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
    #[error("the logger is gone: {0}")]
    Reload(String),
}

/// Changes the installed logger's filter while the process runs.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: std::sync::Arc<std::sync::Mutex<String>>,
}

impl LogControl {
    /// The filter in force (EnvFilter syntax).
    pub fn filter(&self) -> String {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Replaces the filter; a filter that does not parse changes nothing.
    pub fn set_filter(&self, filter: &str) -> Result<(), LogError> {
        let f = parse(filter)?;
        self.handle
            .reload(f)
            .map_err(|e| LogError::Reload(e.to_string()))?;
        let mut c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *c = filter.to_string();
        Ok(())
    }
}

fn parse(filter: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(filter).map_err(|source| LogError::Filter {
        filter: filter.to_string(),
        source,
    })
}

/// Installs the process's logger: `filter` (EnvFilter syntax) or [`DEFAULT_FILTER`].
pub fn init(format: LogFormat, filter: Option<&str>) -> Result<LogControl, LogError> {
    let filter = filter.unwrap_or(DEFAULT_FILTER);
    let (f, handle) = reload::Layer::new(parse(filter)?);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(f)
        .with(fmt)
        .try_init()
        .map_err(|_| LogError::AlreadySet)?;
    Ok(LogControl {
        handle,
        current: std::sync::Arc::new(std::sync::Mutex::new(filter.to_string())),
    })
}
