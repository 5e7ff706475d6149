//! Soft preferences: scores that rank the nodes every filter let through. Each scorer gives a
//! raw number per node; [`rank`] normalises each to 0..=100 over the candidates (as upstream's
//! score plugins do) and adds them with upstream's default weights: NodeAffinity 2,
//! InterPodAffinity 2, TaintToleration 3, ImageLocality 1, PodTopologySpread 2 (least-allocated
//! and balanced resources come from [`super::filter::score`], weight 1 each; the spread score,
//! normalised its own way, from [`super::spread`]).
//!
//! - preferred node affinity: the sum of the weights of the matching preferred terms;
//! - preferred pod affinity / anti-affinity: per term, + / − its weight for every matching pod
//!   in the node's topology domain;
//! - PreferNoSchedule taints the pod does not tolerate: fewer is better;
//! - image locality: the share of the pod's images the node reports in `status.images`.

use k8s_openapi::api::core::v1::{Node, Pod, TopologySpreadConstraint, WeightedPodAffinityTerm};

use super::filter::{NodeInfo, score as resource_score, tolerates};
use super::interpod::{pods_in_domain, term_selects};
use super::spread;
use crate::controllers::selector;

const NODE_AFFINITY_WEIGHT: i64 = 2;
const INTER_POD_WEIGHT: i64 = 2;
const TAINT_WEIGHT: i64 = 3;
const IMAGE_WEIGHT: i64 = 1;

fn node_affinity(pod: &Pod, node: &Node) -> i64 {
    let empty = Default::default();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map_or(0, |terms| {
            terms
                .iter()
                .filter(|t| {
                    let exprs = t.preference.match_expressions.as_deref().unwrap_or(&[]);
                    !exprs.is_empty() && selector::node_requirements(exprs, labels)
                })
                .map(|t| i64::from(t.weight))
                .sum()
        })
}

fn weighted_terms(pod: &Pod, anti: bool) -> Vec<WeightedPodAffinityTerm> {
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let terms = if anti {
        affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
    } else {
        affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
    };
    terms.unwrap_or_default()
}

fn inter_pod(pod: &Pod, info: &NodeInfo, all: &[NodeInfo]) -> i64 {
    let mut total = 0;
    for (anti, sign) in [(false, 1), (true, -1)] {
        for w in weighted_terms(pod, anti) {
            let term = &w.pod_affinity_term;
            if let Some(pods) = pods_in_domain(&info.node, &term.topology_key, all) {
                let n = pods.filter(|other| term_selects(term, pod, other)).count();
                total += sign * i64::from(w.weight) * i64::try_from(n).unwrap_or(i64::MAX);
            }
        }
    }
    total
}

fn untolerated_soft_taints(pod: &Pod, node: &Node) -> i64 {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    let n = taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn image_locality(pod: &Pod, node: &Node) -> i64 {
    let wanted: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.image.as_deref())
        .collect();
    if wanted.is_empty() {
        return 0;
    }
    let images = node
        .status
        .as_ref()
        .and_then(|s| s.images.as_deref())
        .unwrap_or(&[]);
    let present = wanted
        .iter()
        .filter(|w| {
            images
                .iter()
                .any(|i| i.names.iter().flatten().any(|n| n == *w))
        })
        .count();
    i64::try_from(present * 100 / wanted.len()).unwrap_or(0)
}

/// Scales `raw` to 0..=100 over the candidates (the best gets 100); `reverse` when lower is better.
fn normalise(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.iter()
        .map(|&v| {
            if max == min {
                // Nothing tells the nodes apart: everyone gets the same.
                0
            } else if reverse {
                (max - v) * 100 / (max - min)
            } else {
                (v - min) * 100 / (max - min)
            }
        })
        .collect()
}

/// The total score of each candidate (indices into `all`), in the order given.
/// `spread_defaults`: the spread constraints that apply if the pod sets none.
pub fn rank(
    pod: &Pod,
    spread_defaults: &[TopologySpreadConstraint],
    candidates: &[usize],
    all: &[NodeInfo],
    memo: &mut spread::Memo,
) -> Vec<i64> {
    let raw =
        |f: &dyn Fn(&NodeInfo) -> i64| candidates.iter().map(|&i| f(&all[i])).collect::<Vec<_>>();
    let affinity = normalise(&raw(&|n| node_affinity(pod, &n.node)), false);
    let pods = normalise(&raw(&|n| inter_pod(pod, n, all)), false);
    let taints = normalise(&raw(&|n| untolerated_soft_taints(pod, &n.node)), true);
    let images = raw(&|n| image_locality(pod, &n.node));
    let spread = spread::scores(pod, spread_defaults, candidates, all, memo);
    candidates
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            resource_score(pod, &all[i])
                + NODE_AFFINITY_WEIGHT * affinity[k]
                + INTER_POD_WEIGHT * pods[k]
                + TAINT_WEIGHT * taints[k]
                + IMAGE_WEIGHT * images[k]
                + spread::WEIGHT * spread[k]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_scales_to_the_best() {
        assert_eq!(normalise(&[0, 5, 10], false), [0, 50, 100]);
        assert_eq!(normalise(&[0, 1, 2], true), [100, 50, 0]);
        assert_eq!(normalise(&[3, 3], false), [0, 0]);
    }
}
