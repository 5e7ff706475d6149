//! Prometheus metrics of the API, served at `/metrics` in the text exposition format with the
//! apiserver's metric names: requests by verb, resource and code, request latency by verb (a
//! histogram; for watches, the time to start streaming), open watches, and the store's latency by
//! operation and resource (`etcd_request_duration_seconds`, recorded by
//! [`super::metered_store`]).
//!
//! Invariant: recording never blocks a request for long (one short mutex section) and never fails.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Histogram bucket upper bounds in seconds (a subset of the apiserver's).
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn record(&mut self, elapsed: Duration) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        let secs = elapsed.as_secs_f64();
        for (count, bound) in self.counts.iter_mut().zip(BUCKETS) {
            if secs <= *bound {
                *count += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    store: BTreeMap<(String, String), Histogram>,
}

/// The API's metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    open_watches: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The apiserver's verb label for a Kubernetes verb.
pub fn verb_label(verb: &str) -> &'static str {
    match verb {
        "get" => "GET",
        "list" => "LIST",
        "watch" => "WATCH",
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        "delete" => "DELETE",
        "deletecollection" => "DELETECOLLECTION",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Records one finished request (for a watch: one started stream).
    pub fn observe(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        let verb = verb_label(verb);
        // A poisoned lock only means another thread panicked mid-update; counters stay usable.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner
            .requests
            .entry((verb.to_string(), resource.to_string(), code))
            .or_default() += 1;
        inner
            .latency
            .entry(verb.to_string())
            .or_default()
            .record(elapsed);
    }

    /// Records one store call (`operation` get, list, create, update, delete, watch, compact).
    pub fn observe_store(&self, operation: &str, resource: &str, elapsed: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .store
            .entry((operation.to_string(), resource.to_string()))
            .or_default()
            .record(elapsed);
    }

    /// Counts an open watch until the returned guard is dropped.
    pub fn watch_opened(self: &std::sync::Arc<Self>) -> WatchGuard {
        self.open_watches.fetch_add(1, Ordering::Relaxed);
        WatchGuard(self.clone())
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP apiserver_request_total Counter of apiserver requests broken out by verb, resource and HTTP response code.\n# TYPE apiserver_request_total counter"
        );
        for ((verb, resource, code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb.\n# TYPE apiserver_request_duration_seconds histogram"
        );
        for (verb, h) in &inner.latency {
            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{verb=\"{verb}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{verb=\"{verb}\",le=\"+Inf\"}} {}\napiserver_request_duration_seconds_sum{{verb=\"{verb}\"}} {}\napiserver_request_duration_seconds_count{{verb=\"{verb}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP etcd_request_duration_seconds Etcd request latency in seconds for each operation and object type.\n# TYPE etcd_request_duration_seconds histogram"
        );
        for ((op, ty), h) in &inner.store {
            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "etcd_request_duration_seconds_bucket{{operation=\"{op}\",type=\"{ty}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "etcd_request_duration_seconds_bucket{{operation=\"{op}\",type=\"{ty}\",le=\"+Inf\"}} {}\netcd_request_duration_seconds_sum{{operation=\"{op}\",type=\"{ty}\"}} {}\netcd_request_duration_seconds_count{{operation=\"{op}\",type=\"{ty}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests.\n# TYPE apiserver_longrunning_requests gauge\napiserver_longrunning_requests{{verb=\"WATCH\"}} {}",
            self.open_watches.load(Ordering::Relaxed)
        );
        out
    }
}

/// Decrements the open-watch gauge when the watch ends.
pub struct WatchGuard(std::sync::Arc<Metrics>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = std::sync::Arc::new(Metrics::default());
        m.observe("list", "pods", 200, Duration::from_millis(3));
        m.observe("list", "pods", 200, Duration::from_millis(300));
        m.observe("create", "configmaps", 409, Duration::from_millis(1));
        let guard = m.watch_opened();
        let text = m.render();
        assert!(
            text.contains(
                "apiserver_request_total{verb=\"LIST\",resource=\"pods\",code=\"200\"} 2"
            )
        );
        assert!(text.contains(
            "apiserver_request_total{verb=\"POST\",resource=\"configmaps\",code=\"409\"} 1"
        ));
        assert!(
            text.contains(
                "apiserver_request_duration_seconds_bucket{verb=\"LIST\",le=\"0.005\"} 1"
            )
        );
        assert!(text.contains("apiserver_request_duration_seconds_count{verb=\"LIST\"} 2"));
        assert!(text.contains("apiserver_longrunning_requests{verb=\"WATCH\"} 1"));
        drop(guard);
        assert!(
            m.render()
                .contains("apiserver_longrunning_requests{verb=\"WATCH\"} 0")
        );
    }
}
