//! Running the server: prepare the data directory, start the components, wait for a stop signal.
//!
//! Start-up reads as a linear script (each step wraps its error with what it was doing); shutdown
//! on SIGINT or SIGTERM returns `Ok`, so the process exits 0 and systemd sees a clean stop. Anything
//! the configuration asks for that the server cannot do yet fails here with a clear error rather
//! than being ignored (an etcd datastore), or is warned about (the in-process agent).

use std::path::PathBuf;

use tracing::{info, warn};

use crate::config::{Datastore, ServerConfig};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "--datastore-endpoint {endpoints}: running on etcd is not implemented yet; leave --datastore-endpoint empty for the embedded SQLite store"
    )]
    EtcdNotImplemented { endpoints: String },
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(cfg: ServerConfig) -> Result<(), RunError> {
    let db_path = match &cfg.datastore {
        Datastore::Sqlite { path } => path.clone(),
        Datastore::Etcd { endpoints } => {
            return Err(RunError::EtcdNotImplemented {
                endpoints: endpoints.join(","),
            });
        }
    };
    // Install the handlers before anything else is announced: a stop signal that arrives while
    // we start up must still end in a clean shutdown, not the default "killed by signal".
    let mut sigterm = stop_signal(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = stop_signal(tokio::signal::unix::SignalKind::interrupt(), "SIGINT")?;

    // Directories first: a data directory that cannot be used is a start-up error and should be
    // the only line the user sees, not the last of twenty.
    create_dir(&cfg.db_dir())?;
    if let Some(parent) = db_path.parent() {
        create_dir(parent)?;
    }

    for file in &cfg.config_files {
        info!(file = %file.display(), "read config file");
    }
    for (name, value) in cfg.settings() {
        info!("setting {name}={value} (from {})", cfg.sources.get(name));
    }

    // Wiring point for the lead: open the store and start the API server here, e.g.
    //   let store = SqliteStore::open(&db_path)?;   // <data-dir>/server/db/state.db by default
    //   let api = api::serve(&cfg, store.clone()).await?;
    // then the controllers and the scheduler; on the stop signal below, stop them in reverse order
    // (API first, so no new writes arrive, then the store, which flushes its last group commit).
    info!(path = %db_path.display(), "datastore: embedded SQLite");

    if !cfg.disable_agent {
        warn!(
            "the in-process agent is not implemented yet, so this node runs no pods; pass --disable-agent to silence this warning"
        );
    }

    info!("r3s-server started; waiting for SIGINT or SIGTERM");
    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    info!("received {signal}, shutting down");
    info!("r3s-server stopped");
    Ok(())
}

fn stop_signal(
    kind: tokio::signal::unix::SignalKind,
    signal: &'static str,
) -> Result<tokio::signal::unix::Signal, RunError> {
    tokio::signal::unix::signal(kind).map_err(|source| RunError::Signal { signal, source })
}

fn create_dir(path: &std::path::Path) -> Result<(), RunError> {
    std::fs::create_dir_all(path).map_err(|source| RunError::CreateDir {
        path: path.to_owned(),
        source,
    })
}
