//! The PodTopologySpread score: topology spread constraints with `whenUnsatisfiable:
//! ScheduleAnyway` prefer the nodes whose topology domains hold fewer of the pods the constraint
//! selects. (`DoNotSchedule` constraints are filters, in [`super::interpod`].)
//!
//! As upstream's plugin: a candidate lacking any constraint's topology key is ignored and scores
//! 0. Every other candidate's raw score is, per constraint, `count * ln(domains + 2) + maxSkew - 1`,
//! where `count` is the matching pods in its domain (on the node itself for
//! `kubernetes.io/hostname`), counted over all nodes that pass the pod's node selector and
//! required affinity and carry every key, but only for domains some candidate is in; `domains` is
//! the number of such domains (of candidates for the hostname key), so a key with many small
//! domains weighs as much as one with a few large ones. The raw scores are then reversed into
//! 0..=100: `100 * (max + min - raw) / max`, or 100 for all when the maximum is 0. Pods being
//! deleted and pods of other namespaces never count.
//!
//! A pod that sets no constraints gets upstream's system defaults ([`system_defaults`]: per node
//! maxSkew 3, per zone maxSkew 5, both ScheduleAnyway) over the pods of its Services, ReplicaSets
//! and StatefulSets ([`super::owners`]). For those, as upstream, no node is ignored: a node without
//! a key simply gets no score from that constraint (a cluster without zone labels spreads by node
//! only).
//!
//! Counting is the cost (every pod on every node against a selector, for every pending pod), so a
//! scheduling cycle keeps a [`Memo`]: the per-node counts of each (namespace, selector) it met, kept
//! current as the cycle places pods. The hundreds of pods of one Deployment then match the
//! cluster's pods once, not once each. A constraint whose key no scored candidate carries is not
//! counted at all (it cannot change any score: the zone default on a cluster without zones).
//!
//! Not modelled: `matchLabelKeys`, and the node inclusion policies other than their defaults
//! (node affinity honoured, taints ignored).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::filter::{NodeInfo, node_affinity_fits};
use crate::controllers::selector;

/// The weight of this score in the sum, upstream's default for PodTopologySpread.
pub const WEIGHT: i64 = 2;
/// The best normalised score.
const MAX_SCORE: i64 = 100;
const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Upstream's cluster-wide default constraints over the pods `selector` selects.
pub fn system_defaults(selector: LabelSelector) -> Vec<TopologySpreadConstraint> {
    [(HOSTNAME, 3), (ZONE, 5)]
        .into_iter()
        .map(|(key, max_skew)| TopologySpreadConstraint {
            label_selector: Some(selector.clone()),
            max_skew,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a String> {
    node.metadata.labels.as_ref()?.get(key)
}

/// The constraints that score `pod`, and whether a node must carry all their keys to be scored:
/// its own ScheduleAnyway ones (all keys required), or `defaults` if it sets none at all.
fn soft_constraints<'a>(
    pod: &'a Pod,
    defaults: &'a [TopologySpreadConstraint],
) -> (Vec<&'a TopologySpreadConstraint>, bool) {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or(&[]);
    if own.is_empty() {
        return (defaults.iter().collect(), false);
    }
    let soft = own
        .iter()
        .filter(|c| c.when_unsatisfiable == "ScheduleAnyway")
        .collect();
    (soft, true)
}

fn has_all_keys(node: &Node, constraints: &[&TopologySpreadConstraint]) -> bool {
    constraints
        .iter()
        .all(|c| label(node, &c.topology_key).is_some())
}

/// Whether `c` (written in a pod of `namespace`) counts `p`.
fn counts_pod(c: &TopologySpreadConstraint, namespace: &str, p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.metadata.namespace.as_deref().unwrap_or("") == namespace
        && c.label_selector
            .as_ref()
            .is_some_and(|s| selector::matches(s, p.metadata.labels.as_ref()))
}

/// Matching-pod counts per node (indexed like the cycle's node list) for each (namespace,
/// selector) one scheduling cycle has scored with. Call [`Memo::pod_added`] whenever the cycle
/// places a pod on a node, or the counts go stale.
#[derive(Default)]
pub struct Memo {
    counts: HashMap<(String, String), Counted>,
}

struct Counted {
    constraint: TopologySpreadConstraint,
    namespace: String,
    per_node: Vec<i64>,
}

impl Memo {
    fn per_node(
        &mut self,
        c: &TopologySpreadConstraint,
        namespace: &str,
        all: &[NodeInfo],
    ) -> &[i64] {
        // The selector is the key; serialising it is far cheaper than one pass over the pods.
        let selector = serde_json::to_string(&c.label_selector).unwrap_or_default();
        let entry = self
            .counts
            .entry((namespace.to_owned(), selector))
            .or_insert_with(|| Counted {
                constraint: c.clone(),
                namespace: namespace.to_owned(),
                per_node: all
                    .iter()
                    .map(|info| {
                        let n = info
                            .pods
                            .iter()
                            .filter(|p| counts_pod(c, namespace, p))
                            .count();
                        i64::try_from(n).unwrap_or(i64::MAX)
                    })
                    .collect(),
            });
        &entry.per_node
    }

    /// The cycle placed (or nominated) `pod` on node `node`.
    pub fn pod_added(&mut self, node: usize, pod: &Pod) {
        for counted in self.counts.values_mut() {
            if counts_pod(&counted.constraint, &counted.namespace, pod)
                && let Some(n) = counted.per_node.get_mut(node)
            {
                *n += 1;
            }
        }
    }
}

/// Upstream's weight for a key with `domains` domains among the candidates.
fn normalizing_weight(domains: usize) -> f64 {
    // Node counts are far below 2^52: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let size = domains as f64;
    (size + 2.0).ln()
}

#[allow(clippy::cast_precision_loss)]
fn score_for_count(count: i64, max_skew: i32, weight: f64) -> f64 {
    count as f64 * weight + f64::from(max_skew - 1)
}

/// The normalised spread score (0..=100) of each candidate (indices into `all`), in the order
/// given; all 0 when no `ScheduleAnyway` constraint applies. `defaults` apply when the pod sets
/// no constraint of its own.
pub fn scores(
    pod: &Pod,
    defaults: &[TopologySpreadConstraint],
    candidates: &[usize],
    all: &[NodeInfo],
    memo: &mut Memo,
) -> Vec<i64> {
    let (constraints, require_all) = soft_constraints(pod, defaults);
    if constraints.is_empty() {
        return vec![0; candidates.len()];
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
    let ignored: Vec<bool> = candidates
        .iter()
        .map(|&i| require_all && !has_all_keys(&all[i].node, &constraints))
        .collect();
    let scored = ignored.iter().filter(|i| !**i).count();
    // A node's domain for a key; without the key it is upstream's empty-valued domain (only
    // possible for the defaults), which counts as a domain but scores no node.
    let domain = |node: &'_ Node, key: &str| -> Option<String> {
        match label(node, key) {
            Some(v) => Some(v.clone()),
            None if !require_all => Some(String::new()),
            None => None,
        }
    };

    // Per constraint: the domains of the scored candidates with their matching pod counts, and
    // the per-node counts (none for a key no scored candidate has: it scores nobody).
    let mut counts: Vec<BTreeMap<String, i64>> = Vec::with_capacity(constraints.len());
    let mut per_node: Vec<Option<Vec<i64>>> = Vec::with_capacity(constraints.len());
    let mut weights = Vec::with_capacity(constraints.len());
    for c in &constraints {
        let mut domains: BTreeMap<String, i64> = BTreeMap::new();
        let used = candidates
            .iter()
            .zip(&ignored)
            .any(|(&i, ignored)| !ignored && label(&all[i].node, &c.topology_key).is_some());
        let nodes = used.then(|| memo.per_node(c, namespace, all).to_vec());
        if c.topology_key != HOSTNAME {
            let present: BTreeSet<String> = candidates
                .iter()
                .zip(&ignored)
                .filter(|(_, ignored)| !**ignored)
                .filter_map(|(&i, _)| domain(&all[i].node, &c.topology_key))
                .collect();
            domains = present.into_iter().map(|d| (d, 0)).collect();
            let eligible = all.iter().enumerate().filter(|(_, i)| {
                node_affinity_fits(pod, &i.node)
                    && (!require_all || has_all_keys(&i.node, &constraints))
            });
            for (k, info) in eligible.filter(|_| nodes.is_some()) {
                if let Some(count) =
                    domain(&info.node, &c.topology_key).and_then(|d| domains.get_mut(&d))
                {
                    *count += nodes.as_ref().and_then(|n| n.get(k)).copied().unwrap_or(0);
                }
            }
        }
        let size = if c.topology_key == HOSTNAME {
            scored
        } else {
            domains.len()
        };
        weights.push(normalizing_weight(size));
        counts.push(domains);
        per_node.push(nodes);
    }

    let raw: Vec<Option<i64>> = candidates
        .iter()
        .zip(&ignored)
        .map(|(&i, &ignored)| {
            if ignored {
                return None;
            }
            let info = &all[i];
            let mut score = 0.0;
            for (k, c) in constraints.iter().enumerate() {
                let Some(value) = label(&info.node, &c.topology_key) else {
                    continue;
                };
                let count = if c.topology_key == HOSTNAME {
                    per_node[k]
                        .as_ref()
                        .and_then(|n| n.get(i).copied())
                        .unwrap_or(0)
                } else {
                    counts[k].get(value.as_str()).copied().unwrap_or(0)
                };
                score += score_for_count(count, c.max_skew, weights[k]);
            }
            // Scores are small non-negative numbers: the rounding cast cannot overflow.
            #[allow(clippy::cast_possible_truncation)]
            Some(score.round() as i64)
        })
        .collect();
    normalise(&raw)
}

/// Reverses raw scores into 0..=100 (fewest matching pods best); ignored nodes (`None`) get 0.
fn normalise(raw: &[Option<i64>]) -> Vec<i64> {
    let present = raw.iter().flatten().copied();
    let min = present.clone().min().unwrap_or(0);
    let max = present.max().unwrap_or(0);
    raw.iter()
        .map(|r| match r {
            None => 0,
            Some(_) if max == 0 => MAX_SCORE,
            Some(s) => MAX_SCORE * (max + min - s) / max,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        all.insert(HOSTNAME.into(), name.into());
        NodeInfo::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(all),
                ..ObjectMeta::default()
            },
            ..Node::default()
        })
    }

    fn pod(app: &str, spread: &[(&str, i32, &str)]) -> Pod {
        let constraints: Vec<_> = spread
            .iter()
            .map(|(key, skew, when)| {
                json!({"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when,
                       "labelSelector": {"matchLabels": {"app": "web"}}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": app}},
            "spec": {"containers": [], "topologySpreadConstraints": constraints}
        }))
        .expect("pod")
    }

    fn with_pods(mut info: NodeInfo, n: usize) -> NodeInfo {
        for _ in 0..n {
            info.add_pod(pod("web", &[]).into());
        }
        info
    }

    #[test]
    fn fewer_matching_pods_in_the_zone_scores_higher() {
        // Zone a: 2 matching pods over two nodes; zone b: 1 pod.
        let all = vec![
            with_pods(node("a1", &[("zone", "a")]), 1),
            with_pods(node("a2", &[("zone", "a")]), 1),
            with_pods(node("b1", &[("zone", "b")]), 1),
        ];
        let p = pod("web", &[("zone", 1, "ScheduleAnyway")]);
        // ln(4) = 1.386: raw a = round(2.77) = 3, b = round(1.39) = 1; 100 * (3 + 1 - s) / 3.
        assert_eq!(
            scores(&p, &[], &[0, 1, 2], &all, &mut Memo::default()),
            [33, 33, 100]
        );
        // DoNotSchedule constraints do not score.
        let hard = pod("web", &[("zone", 1, "DoNotSchedule")]);
        assert_eq!(
            scores(&hard, &[], &[0, 1, 2], &all, &mut Memo::default()),
            [0, 0, 0]
        );
    }

    #[test]
    fn nodes_without_the_key_score_zero_and_empty_domains_score_best() {
        let all = vec![
            with_pods(node("a1", &[("zone", "a")]), 3),
            node("b1", &[("zone", "b")]),
            node("bare", &[]),
        ];
        let p = pod("web", &[("zone", 2, "ScheduleAnyway")]);
        // raw a = round(3 ln 4 + 1) = 5, b = 1: a = 100 * 1 / 5 = 20.
        assert_eq!(
            scores(&p, &[], &[0, 1, 2], &all, &mut Memo::default()),
            [20, 100, 0]
        );
        // Nothing matching anywhere: every node with the key gets the maximum, whether or not
        // maxSkew - 1 lifts all raw scores above 0.
        let empty = vec![node("a1", &[("zone", "a")]), node("b1", &[("zone", "b")])];
        assert_eq!(
            scores(&p, &[], &[0, 1], &empty, &mut Memo::default()),
            [100, 100]
        );
        let tight = pod("web", &[("zone", 1, "ScheduleAnyway")]);
        assert_eq!(
            scores(&tight, &[], &[0, 1], &empty, &mut Memo::default()),
            [100, 100]
        );
    }

    #[test]
    fn only_candidate_domains_and_eligible_nodes_count() {
        // Node c is not a candidate: its zone gets no count. Pods of other apps, other
        // namespaces or being deleted do not count.
        let mut other_ns = pod("web", &[]);
        other_ns.metadata.namespace = Some("elsewhere".into());
        let mut deleting = pod("web", &[]);
        deleting.metadata.deletion_timestamp =
            serde_json::from_value(json!("2024-01-01T00:00:00Z")).ok();
        let mut a = with_pods(node("a1", &[("zone", "a")]), 1);
        a.add_pod(other_ns.into());
        a.add_pod(deleting.into());
        a.add_pod(pod("db", &[]).into());
        let all = vec![
            a,
            node("b1", &[("zone", "b")]),
            with_pods(node("c1", &[("zone", "c")]), 9),
        ];
        let p = pod("web", &[("zone", 1, "ScheduleAnyway")]);
        // Two candidate domains: ln(4); raw a = 1, b = 0 → a = 100 * (1 + 0 - 1) / 1 = 0.
        assert_eq!(
            scores(&p, &[], &[0, 1], &all, &mut Memo::default()),
            [0, 100]
        );
    }

    #[test]
    fn hostname_counts_per_node_and_constraints_add_up() {
        let all = vec![
            with_pods(node("a1", &[("zone", "a")]), 2),
            node("a2", &[("zone", "a")]),
            with_pods(node("b1", &[("zone", "b")]), 1),
        ];
        let p = pod(
            "web",
            &[
                (HOSTNAME, 1, "ScheduleAnyway"),
                ("zone", 1, "ScheduleAnyway"),
            ],
        );
        // host weight ln(5) = 1.609, zone weight ln(4) = 1.386.
        // a1: 2 * 1.609 + 2 * 1.386 = 5.99 → 6; a2: 0 + 2.77 → 3; b1: 1.609 + 1.386 → 3.
        // min 3, max 6: a1 = 100 * 3 / 6 = 50, a2 = b1 = 100 * 6 / 6 = 100.
        assert_eq!(
            scores(&p, &[], &[0, 1, 2], &all, &mut Memo::default()),
            [50, 100, 100]
        );
    }

    #[test]
    fn pods_without_constraints_get_the_system_defaults() {
        // No zone labels (a typical Pi cluster): only the per-node default scores.
        let all = vec![
            with_pods(node("a", &[]), 2),
            node("b", &[]),
            with_pods(node("c", &[]), 1),
        ];
        let web: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).expect("selector");
        let defaults = system_defaults(web);
        let p = pod("web", &[]);
        // Host weight ln(5) = 1.609, maxSkew 3: raw a = round(3.22 + 2) = 5, b = 2, c = 4.
        // min 2, max 5: a = 100 * 2 / 5 = 40, b = 100, c = 100 * 3 / 5 = 60.
        assert_eq!(
            scores(&p, &defaults, &[0, 1, 2], &all, &mut Memo::default()),
            [40, 100, 60]
        );
        // A pod with a constraint of its own (even a DoNotSchedule one) does not get them.
        let own = pod("web", &[(HOSTNAME, 1, "DoNotSchedule")]);
        assert_eq!(
            scores(&own, &defaults, &[0, 1, 2], &all, &mut Memo::default()),
            [0, 0, 0]
        );
        // With zones, the zone constraint adds up where the key exists; a node without it is
        // still scored (by node only), not ignored.
        let zoned = vec![
            with_pods(node("a", &[(ZONE, "z1")]), 2),
            node("b", &[(ZONE, "z2")]),
            node("bare", &[]),
        ];
        let s = scores(&p, &defaults, &[0, 1, 2], &zoned, &mut Memo::default());
        assert!(s[1] > s[0] && s[2] > s[0], "{s:?}");
    }

    #[test]
    fn a_memo_kept_current_counts_as_a_fresh_one() {
        let web: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).expect("selector");
        let defaults = system_defaults(web);
        let p = pod("web", &[]);
        let mut all = vec![
            with_pods(node("a", &[(ZONE, "z1")]), 2),
            node("b", &[(ZONE, "z1")]),
            with_pods(node("c", &[(ZONE, "z2")]), 1),
        ];
        let mut memo = Memo::default();
        let before = scores(&p, &defaults, &[0, 1, 2], &all, &mut memo);
        // The cycle places two pods on b: the kept memo must see them as a fresh count does.
        for _ in 0..2 {
            all[1].add_pod(p.clone().into());
            memo.pod_added(1, &p);
        }
        let kept = scores(&p, &defaults, &[0, 1, 2], &all, &mut memo);
        assert_eq!(
            kept,
            scores(&p, &defaults, &[0, 1, 2], &all, &mut Memo::default())
        );
        assert_ne!(before, kept, "placing pods changes the scores");
        // Pods another selector does not count leave its counts alone.
        memo.pod_added(2, &pod("db", &[]));
        assert_eq!(kept, scores(&p, &defaults, &[0, 1, 2], &all, &mut memo));
    }
}
