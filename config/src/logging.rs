//! Logging set-up shared by both binaries: `tracing` events as text on stderr.
//!
//! The level is `info`, or `debug` with `--debug`; `RUST_LOG` (an `EnvFilter` directive such as
//! `r3s_server::store=trace,info`) overrides both. A malformed `RUST_LOG` is a start-up error rather
//! than being ignored, so a mistyped filter never silently hides logs.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("environment variable RUST_LOG: invalid filter {value:?}: {reason}")]
    BadFilter { value: String, reason: String },
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// The filter for `--debug` and the value of `RUST_LOG` (pass `std::env::var("RUST_LOG").ok()`).
pub fn filter(debug: bool, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(directives) => {
            EnvFilter::builder()
                .parse(directives)
                .map_err(|e| LoggingError::BadFilter {
                    value: directives.to_owned(),
                    reason: e.to_string(),
                })
        }
        None => Ok(EnvFilter::new(if debug { "debug" } else { "info" })),
    }
}

/// Installs the global subscriber: stderr, colours only on a terminal.
pub fn init(debug: bool, rust_log: Option<&str>) -> Result<(), LoggingError> {
    tracing_subscriber::fmt()
        .with_env_filter(filter(debug, rust_log)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| LoggingError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(filter(false, None).unwrap().to_string(), "info");
        assert_eq!(filter(true, None).unwrap().to_string(), "debug");
        assert_eq!(filter(true, Some("")).unwrap().to_string(), "debug");
        assert_eq!(
            filter(false, Some("r3s_server=trace")).unwrap().to_string(),
            "r3s_server=trace"
        );
        let err = filter(false, Some("r3s_server=loud"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable RUST_LOG: invalid filter"),
            "{err}"
        );
    }
}
