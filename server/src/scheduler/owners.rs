//! The Services, ReplicaSets and StatefulSets that select a pod, as upstream's PodTopologySpread
//! reads them to build the selector of its cluster-wide default constraints (a pod that sets no
//! spread constraints is still spread with the pods of its Service and its workload).
//!
//! The caches keep only what the selector needs: templates, status, annotations and managed
//! fields are dropped before an object is stored, so a cluster's Deployments cost the scheduler a
//! few hundred bytes each.

use std::collections::BTreeMap;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::controllers::{cache, selector};

/// The three caches.
#[derive(Clone)]
pub struct Owners {
    services: Store<Service>,
    replicasets: Store<ReplicaSet>,
    statefulsets: Store<StatefulSet>,
}

/// Keeps the name, namespace and uid only.
fn slim(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        ..ObjectMeta::default()
    };
}

impl Owners {
    /// The caches and the stream that fills them (poll it, or they stay empty).
    pub fn watch(client: &kube::Client) -> (Owners, impl Stream<Item = ()> + Send + 'static) {
        let (services, sw) = reflector::store();
        let (replicasets, rw) = reflector::store();
        let (statefulsets, tw) = reflector::store();
        let cfg = watcher::Config::default;
        let svc = watcher(Api::<Service>::all(client.clone()), cfg())
            .modify(|s| {
                slim(&mut s.metadata);
                s.status = None;
                if let Some(spec) = s.spec.as_mut() {
                    *spec = k8s_openapi::api::core::v1::ServiceSpec {
                        selector: spec.selector.take(),
                        ..Default::default()
                    };
                }
            })
            .reflect(sw);
        let rs = watcher(Api::<ReplicaSet>::all(client.clone()), cfg())
            .modify(|r| {
                slim(&mut r.metadata);
                r.status = None;
                r.spec.template = None;
            })
            .reflect(rw);
        let sts = watcher(Api::<StatefulSet>::all(client.clone()), cfg())
            .modify(|s| {
                slim(&mut s.metadata);
                s.status = None;
                s.spec.template = PodTemplateSpec::default();
                s.spec.volume_claim_templates = None;
            })
            .reflect(tw);
        let events = futures::stream::select_all([
            cache::wakes(svc.default_backoff()).boxed(),
            cache::wakes(rs.default_backoff()).boxed(),
            cache::wakes(sts.default_backoff()).boxed(),
        ]);
        (
            Owners {
                services,
                replicasets,
                statefulsets,
            },
            events,
        )
    }

    /// Waits for every cache's first complete list; false if a cache stopped.
    pub async fn synced(&self) -> bool {
        self.services.wait_until_ready().await.is_ok()
            && self.replicasets.wait_until_ready().await.is_ok()
            && self.statefulsets.wait_until_ready().await.is_ok()
    }

    /// The selector of the pods spread together with `pod`: every Service of its namespace whose
    /// selector matches it, ANDed with the selectors of the ReplicaSets and StatefulSets that
    /// match it. `None` when nothing selects the pod (it then gets no default constraints).
    pub fn default_selector(&self, pod: &Pod) -> Option<LabelSelector> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
        let labels = pod.metadata.labels.as_ref()?;
        let mut match_labels: BTreeMap<String, String> = BTreeMap::new();
        for svc in self.services.state() {
            if svc.metadata.namespace.as_deref() != Some(namespace) {
                continue;
            }
            let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            if !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                match_labels.extend(sel.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let workload_selectors = self
            .replicasets
            .state()
            .into_iter()
            .filter(|r| r.metadata.namespace.as_deref() == Some(namespace))
            .map(|r| r.spec.selector.clone())
            .chain(
                self.statefulsets
                    .state()
                    .into_iter()
                    .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
                    .map(|s| s.spec.selector.clone()),
            );
        let mut expressions = Vec::new();
        for sel in workload_selectors {
            let empty = sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && sel.match_expressions.as_ref().is_none_or(Vec::is_empty);
            if empty || !selector::matches(&sel, Some(labels)) {
                continue;
            }
            expressions.extend(requirements(sel));
        }
        if match_labels.is_empty() && expressions.is_empty() {
            return None;
        }
        Some(LabelSelector {
            match_labels: (!match_labels.is_empty()).then_some(match_labels),
            match_expressions: (!expressions.is_empty()).then_some(expressions),
        })
    }
}

/// A selector as requirements (`matchLabels` entries become `In [value]`), so that several can be
/// ANDed in one selector.
fn requirements(sel: LabelSelector) -> Vec<LabelSelectorRequirement> {
    let mut out: Vec<LabelSelectorRequirement> = sel
        .match_labels
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| LabelSelectorRequirement {
            key,
            operator: "In".into(),
            values: Some(vec![value]),
        })
        .collect();
    out.extend(sel.match_expressions.unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workload_selectors_become_requirements_that_and_together() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "Exists"}]
        }))
        .expect("selector");
        let reqs = requirements(sel);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].key, "app");
        assert_eq!(reqs[0].operator, "In");
        assert_eq!(reqs[0].values.as_deref(), Some(&["web".to_string()][..]));
        assert_eq!(reqs[1].operator, "Exists");
        let combined = LabelSelector {
            match_labels: None,
            match_expressions: Some(reqs),
        };
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect()
        };
        assert!(selector::matches(
            &combined,
            Some(&labels(&[("app", "web"), ("tier", "x")]))
        ));
        assert!(!selector::matches(
            &combined,
            Some(&labels(&[("app", "web")]))
        ));
    }
}
