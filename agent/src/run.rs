//! Running the node agent.
//!
//! The agent (registering the node, running pods through libcontainer, pulling images, pod
//! networking) is not implemented yet. Rather than start and pretend to be a node, `run` logs the
//! checked configuration at debug level and fails with [`RunError::NotImplemented`], so a unit
//! file or script using `r3s-agent` today sees a clear failure, not a silent no-op.

use tracing::debug;

use crate::config::AgentConfig;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the node agent is not implemented yet, so this node cannot join {server}")]
    NotImplemented { server: String },
}

/// Runs the agent; for now, always the error above once the configuration has been checked.
pub async fn run(cfg: AgentConfig) -> Result<(), RunError> {
    for file in &cfg.config_files {
        debug!(file = %file.display(), "read config file");
    }
    for (name, value) in cfg.settings() {
        debug!("setting {name}={value} (from {})", cfg.sources.get(name));
    }
    Err(RunError::NotImplemented {
        server: cfg.server.to_string(),
    })
}
