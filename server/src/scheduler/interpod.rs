//! Filters that look at other pods: required pod affinity and anti-affinity (both the incoming
//! pod's terms and, symmetrically, the anti-affinity of pods already placed), and topology spread
//! constraints with `whenUnsatisfiable: DoNotSchedule`. Pure functions over the cluster snapshot.
//!
//! Topology domains are node label values for a `topologyKey`; a node without the key belongs to
//! no domain (it fails affinity and spread, and passes anti-affinity).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};

use super::filter::{NodeInfo, node_affinity_fits};
use crate::controllers::selector;

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a String> {
    node.metadata.labels.as_ref()?.get(key)
}

/// True if `term` (as written in `owner`'s spec) selects `other`.
pub(super) fn term_selects(term: &PodAffinityTerm, owner: &Pod, other: &Pod) -> bool {
    let namespaces = term.namespaces.clone().unwrap_or_default();
    let other_ns = other.metadata.namespace.as_deref().unwrap_or("");
    let ns_ok = if namespaces.is_empty() && term.namespace_selector.is_none() {
        owner.metadata.namespace.as_deref().unwrap_or("") == other_ns
    } else {
        // A namespaceSelector needs namespace labels the scheduler does not cache: only the
        // explicit list is honoured, and `{}` (all namespaces) is.
        namespaces.iter().any(|n| n == other_ns)
            || term
                .namespace_selector
                .as_ref()
                .is_some_and(selector::is_empty)
    };
    ns_ok
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| selector::matches(s, other.metadata.labels.as_ref()))
}

/// Pods placed in the same `key` domain as `node`.
pub(super) fn pods_in_domain<'a>(
    node: &Node,
    key: &str,
    all: &'a [NodeInfo],
) -> Option<impl Iterator<Item = &'a Pod> + 'a> {
    let value = label(node, key)?.clone();
    let key = key.to_string();
    Some(
        all.iter()
            .filter(move |i| label(&i.node, &key) == Some(&value))
            .flat_map(|i| i.pods.iter().map(|p| &**p)),
    )
}

fn required_terms(pod: &Pod, anti: bool) -> Vec<PodAffinityTerm> {
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let terms = if anti {
        affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
    } else {
        affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
    };
    terms.unwrap_or_default()
}

/// Why `pod` may not join `info` given the pods already placed; empty if it may. Checked in
/// upstream's order: the pod's affinity, its anti-affinity, existing pods' anti-affinity, spread.
pub fn filter(pod: &Pod, info: &NodeInfo, all: &[NodeInfo]) -> Vec<String> {
    for term in required_terms(pod, false) {
        let satisfied = pods_in_domain(&info.node, &term.topology_key, all)
            .is_some_and(|mut pods| pods.any(|p| term_selects(&term, pod, p)));
        // Upstream lets the first pod of a group in when nothing anywhere matches yet and the
        // pod matches its own term.
        let first_of_group = !all
            .iter()
            .flat_map(|i| i.pods.iter())
            .any(|p| term_selects(&term, pod, p))
            && term_selects(&term, pod, pod)
            && label(&info.node, &term.topology_key).is_some();
        if !satisfied && !first_of_group {
            return vec!["node(s) didn't match pod affinity rules".into()];
        }
    }
    for term in required_terms(pod, true) {
        let conflict = pods_in_domain(&info.node, &term.topology_key, all)
            .is_some_and(|mut pods| pods.any(|p| term_selects(&term, pod, p)));
        if conflict {
            return vec!["node(s) didn't match pod anti-affinity rules".into()];
        }
    }
    // Then pods already placed whose anti-affinity rejects the newcomer in their domain.
    for other_info in all {
        for other in &other_info.anti_affinity_pods {
            for term in required_terms(other, true) {
                let same_domain = match (
                    label(&other_info.node, &term.topology_key),
                    label(&info.node, &term.topology_key),
                ) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                if same_domain && term_selects(&term, other, pod) {
                    return vec!["node(s) didn't satisfy existing pods anti-affinity rules".into()];
                }
            }
        }
    }
    spread(pod, info, all)
}

/// Topology spread constraints with `DoNotSchedule`.
fn spread(pod: &Pod, info: &NodeInfo, all: &[NodeInfo]) -> Vec<String> {
    let constraints = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.clone())
        .unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
    for c in constraints
        .iter()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
    {
        let Some(domain) = label(&info.node, &c.topology_key) else {
            return vec![
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            ];
        };
        let selects = |p: &Pod| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && c.label_selector
                    .as_ref()
                    .is_some_and(|s| selector::matches(s, p.metadata.labels.as_ref()))
        };
        // Domains are those of nodes the pod could go to by node affinity / selector.
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for i in all.iter().filter(|i| node_affinity_fits(pod, &i.node)) {
            if let Some(d) = label(&i.node, &c.topology_key) {
                let n = i.pods.iter().filter(|p| selects(p)).count();
                *counts.entry(d.clone()).or_default() += i64::try_from(n).unwrap_or(i64::MAX);
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        let here = counts.get(domain).copied().unwrap_or(0);
        let own = i64::from(selects(pod));
        if here + own - min > i64::from(c.max_skew) {
            return vec!["node(s) didn't match pod topology spread constraints".into()];
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::TopologySpreadConstraint;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde_json::json;

    fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("zone".to_string(), zone.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        })
    }

    fn pod(anti: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}},
            "spec": {"containers": []}
        }))
        .expect("pod");
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "x".to_string())].into()),
            match_expressions: None,
        };
        if let Some(spec) = p.spec.as_mut() {
            if anti {
                spec.affinity = serde_json::from_value(json!({"podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "x"}}}]}}))
                .ok();
            } else {
                spec.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "zone".into(),
                    when_unsatisfiable: "DoNotSchedule".into(),
                    label_selector: Some(sel),
                    ..TopologySpreadConstraint::default()
                }]);
            }
        }
        p
    }

    #[test]
    fn spread_and_anti_affinity() {
        let mut a = node("a", "za");
        a.add_pod(pod(false).into());
        a.add_pod(pod(false).into());
        let mut b1 = node("b1", "zb");
        b1.add_pod(pod(false).into());
        let b2 = node("b2", "zb");
        let all = vec![a.clone(), b1.clone(), b2.clone()];
        assert_eq!(
            filter(&pod(false), &all[0], &all),
            ["node(s) didn't match pod topology spread constraints"]
        );
        assert!(filter(&pod(false), &all[2], &all).is_empty());
        // Anti-affinity by zone: zone b already has a matching pod on b1, so b2 is out too.
        assert_eq!(
            filter(&pod(true), &all[2], &all),
            ["node(s) didn't match pod anti-affinity rules"]
        );
    }
}
