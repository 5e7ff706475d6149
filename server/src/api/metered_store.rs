//! The store as the API uses it, timed: every call is recorded in [`Metrics`] as
//! `etcd_request_duration_seconds{operation,type}`, the name kube-apiserver (and so k3s, on kine)
//! uses for its storage latency, with `type` the key's resource (`/registry/<resource>/…`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::metrics::Metrics;
use crate::store::{KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream};

/// Wraps a store so that each call's latency is recorded.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<dyn Store> {
        Arc::new(Self { inner, metrics })
    }

    fn done(&self, operation: &str, key: &str, started: Instant) {
        self.metrics
            .observe_store(operation, resource_of(key), started.elapsed());
    }
}

/// The resource part of a key (`/registry/<resource>/…`, `/registry/<group>/<resource>/…`).
fn resource_of(key: &str) -> &str {
    let mut parts = key.trim_start_matches('/').split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some(first), Some(second)) if first.contains('.') => second,
        (Some(first), _) => first,
        _ => "",
    }
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let started = Instant::now();
        let out = self.inner.get(key);
        self.done("get", key, started);
        out
    }

    fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult, StoreError> {
        let started = Instant::now();
        let out = self.inner.list(prefix, opts);
        self.done("list", prefix, started);
        out
    }

    fn current_revision(&self) -> Revision {
        self.inner.current_revision()
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted_revision()
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        let started = Instant::now();
        let out = self.inner.create(key, value).await;
        self.done("create", key, started);
        out
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let started = Instant::now();
        let out = self.inner.update(key, value, expected).await;
        self.done("update", key, started);
        out
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let started = Instant::now();
        let out = self.inner.delete(key, expected).await;
        self.done("delete", key, started);
        out
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let started = Instant::now();
        let out = self.inner.watch(prefix, after);
        self.done("watch", prefix, started);
        out
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let started = Instant::now();
        let out = self.inner.compact(revision).await;
        self.done("compact", "", started);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::resource_of;

    #[test]
    fn keys_name_their_resource() {
        assert_eq!(resource_of("/registry/pods/default/web"), "pods");
        assert_eq!(resource_of("/registry/pods/"), "pods");
        assert_eq!(
            resource_of("/registry/coordination.k8s.io/leases/kube-node-lease/n1"),
            "leases"
        );
        assert_eq!(resource_of("/registry/namespaces/default"), "namespaces");
        assert_eq!(resource_of(""), "");
    }
}
