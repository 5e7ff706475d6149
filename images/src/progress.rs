//! Pull progress events, sent on an unbounded channel the caller (CLI progress bar, agent events)
//! drains at its own pace. Sending never blocks or fails a pull: a dropped receiver is ignored.
//!
//! Per layer the sequence is `LayerProgress*` (throttled to about every 256 KiB plus the final
//! byte count), then `LayerDownloaded`, then `LayerUnpacked`; `Resolved` comes first and `Done` last.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::digest::Digest;

/// One step of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// An endpoint failed and the next one will be tried.
    EndpointFailed { endpoint: String, error: String },
    /// The manifest is known: these layers (digest, compressed size) will be fetched.
    Resolved {
        image: String,
        endpoint: String,
        manifest: Digest,
        layers: Vec<(Digest, u64)>,
    },
    /// Bytes of a layer received so far.
    LayerProgress {
        digest: Digest,
        done: u64,
        total: u64,
    },
    /// A layer blob is in the store (`cached`: it already was, nothing downloaded).
    LayerDownloaded {
        digest: Digest,
        size: u64,
        cached: bool,
    },
    /// A layer is unpacked (`cached`: its snapshot already existed).
    LayerUnpacked {
        digest: Digest,
        diff_id: Digest,
        cached: bool,
    },
    /// The image is recorded. `downloaded` counts bytes actually fetched (0 if all cached).
    Done {
        image: String,
        downloaded: u64,
        total: u64,
        duration: Duration,
    },
}

/// Where events go (or nowhere).
#[derive(Debug, Clone, Default)]
pub struct Progress(Option<UnboundedSender<PullEvent>>);

impl Progress {
    pub fn new(tx: UnboundedSender<PullEvent>) -> Self {
        Self(Some(tx))
    }

    pub fn none() -> Self {
        Self(None)
    }

    pub(crate) fn send(&self, e: PullEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(e);
        }
    }
}
