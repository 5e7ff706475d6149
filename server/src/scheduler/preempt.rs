//! Preemption (upstream's DefaultPreemption post-filter): when a pod fits nowhere, find one node
//! where evicting some lower-priority pods would let it fit, and the smallest such set of victims.
//!
//! Per node: take every lower-priority pod that is not already terminating off the node; if the
//! pod still does not fit, preemption cannot help there. Otherwise put the candidates back one by
//! one, most important first (those whose eviction would break a PodDisruptionBudget before the
//! others), keeping each one that still leaves room: the rest are the victims. Among nodes, upstream's
//! order picks the plan: fewest budget violations, then the lowest highest-victim priority, then
//! the lowest sum of priorities, then the fewest victims, then the first node by name.
//!
//! Pure over a [`NodeInfo`] snapshot; the scheduler loop does the API writes (nominatedNodeName,
//! DisruptionTarget condition, graceful delete of the victims).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::filter::{self, NodeInfo};
use super::interpod;
use crate::controllers::selector;

/// A pod's priority as admission resolved it (0 without one).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// True if `pod` may preempt others (`preemptionPolicy` is not `Never`).
pub fn may_preempt(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        != Some("Never")
}

/// What a PodDisruptionBudget still allows: how many of its pods may go.
#[derive(Clone, Debug)]
pub struct Budget {
    pub namespace: String,
    pub selector: LabelSelector,
    pub allowed: i32,
}

impl Budget {
    fn covers(&self, pod: &Pod) -> bool {
        pod.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && selector::matches(&self.selector, pod.metadata.labels.as_ref())
    }
}

/// The chosen node and the pods to evict from it.
#[derive(Debug)]
pub struct Plan {
    pub node: usize,
    pub victims: Vec<Arc<Pod>>,
}

/// How a plan ranks: lower is better (upstream's tie-breakers, in order).
type Rank = (usize, i32, i64, usize);

/// Reasons that removing pods can fix; anything else (taints, selectors, node name…) cannot.
fn resolvable(reason: &str) -> bool {
    reason.starts_with("Insufficient ")
        || reason == "Too many pods"
        || reason == "node(s) didn't have free ports for the requested pod ports"
        || reason == "node(s) didn't match pod anti-affinity rules"
        || reason == "node(s) didn't match pod topology spread constraints"
}

fn fits(pod: &Pod, info: &NodeInfo, all: &[NodeInfo]) -> bool {
    filter::filter(pod, info).is_empty() && interpod::filter(pod, info, all).is_empty()
}

/// `info` with exactly `keep` as its pods (resources and ports recounted).
fn with_pods(info: &NodeInfo, keep: impl IntoIterator<Item = Arc<Pod>>) -> NodeInfo {
    let mut out = NodeInfo::new(info.node.clone());
    for p in keep {
        out.add_pod(p);
    }
    out
}

/// The best plan for `pod`, or the reasons, per node, why preemption does not help (for the
/// `preemption: 0/N nodes are available: …` sentence).
pub fn plan(pod: &Pod, infos: &[NodeInfo], budgets: &[Budget]) -> Result<Plan, Vec<String>> {
    let mine = priority(pod);
    let mut reasons = Vec::new();
    let mut best: Option<(Rank, Plan)> = None;
    for (i, info) in infos.iter().enumerate() {
        let before = filter::filter(pod, info);
        let before = if before.is_empty() {
            interpod::filter(pod, info, infos)
        } else {
            before
        };
        if !before.iter().all(|r| resolvable(r)) {
            reasons.push("Preemption is not helpful for scheduling".to_string());
            continue;
        }
        let (mut candidates, staying): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = info
            .pods
            .iter()
            .cloned()
            .partition(|p| priority(p) < mine && p.metadata.deletion_timestamp.is_none());
        if candidates.is_empty() {
            reasons.push("No preemption victims found for incoming pod".to_string());
            continue;
        }
        if !fits(pod, &with_pods(info, staying.iter().cloned()), infos) {
            reasons.push("No preemption victims found for incoming pod".to_string());
            continue;
        }
        // Most important first: higher priority, then the longer running.
        candidates.sort_by(|a, b| {
            priority(b).cmp(&priority(a)).then_with(|| {
                let started = |p: &Pod| p.status.as_ref().and_then(|s| s.start_time.clone());
                started(a).cmp(&started(b))
            })
        });
        let mut budgets_left: Vec<i32> = budgets.iter().map(|b| b.allowed).collect();
        let (violating, fine): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) =
            candidates.into_iter().partition(|p| {
                let mut violates = false;
                for (b, left) in budgets.iter().zip(budgets_left.iter_mut()) {
                    if b.covers(p) {
                        if *left <= 0 {
                            violates = true;
                        }
                        *left -= 1;
                    }
                }
                violates
            });
        let mut kept = staying;
        let mut victims = Vec::new();
        let mut violations = 0;
        for (p, violates) in violating
            .into_iter()
            .map(|p| (p, true))
            .chain(fine.into_iter().map(|p| (p, false)))
        {
            let mut trial = kept.clone();
            trial.push(p.clone());
            if fits(pod, &with_pods(info, trial.iter().cloned()), infos) {
                kept = trial;
            } else {
                violations += usize::from(violates);
                victims.push(p);
            }
        }
        let rank: Rank = (
            violations,
            victims
                .iter()
                .map(|p| priority(p))
                .max()
                .unwrap_or(i32::MIN),
            victims.iter().map(|p| i64::from(priority(p))).sum(),
            victims.len(),
        );
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, Plan { node: i, victims }));
        }
    }
    best.map(|(_, plan)| plan).ok_or(reasons)
}

/// `preemption: 0/N nodes are available: 2 No preemption victims found for incoming pod, 1
/// Preemption is not helpful for scheduling.` from [`plan`]'s reasons.
pub fn summary(total_nodes: usize, reasons: &[String]) -> String {
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *histogram.entry(r.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = histogram
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    format!(
        "preemption: 0/{total_nodes} nodes are available: {}.",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, Node, NodeCondition, NodeStatus, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cpu: &str) -> NodeInfo {
        NodeInfo::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity("8Gi".into())),
                    ]
                    .into(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        })
    }

    fn pod(name: &str, cpu: &str, priority: i32, app: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some([("app".to_string(), app.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                priority: Some(priority),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        })
    }

    fn names(plan: &Plan) -> Vec<&str> {
        let mut v: Vec<&str> = plan
            .victims
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or(""))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn fewest_and_lowest_victims_on_the_best_node() {
        // a: two 1-cpu pods at priority 10; b: one 2-cpu pod at priority 5.
        let mut a = node("a", "2");
        a.add_pod(pod("a1", "1", 10, "x"));
        a.add_pod(pod("a2", "1", 10, "x"));
        let mut b = node("b", "2");
        b.add_pod(pod("b1", "2", 5, "x"));
        let infos = vec![a, b];
        let plan = plan(&pod("new", "1", 100, "y"), &infos, &[]).expect("a plan");
        // On a one victim of 10 suffices, on b one of 5: lower highest priority wins.
        assert_eq!(plan.node, 1);
        assert_eq!(names(&plan), ["b1"]);

        // Only a pod of higher priority than the victims can preempt.
        let err = super::plan(&pod("new", "1", 5, "y"), &infos, &[]).expect_err("no plan");
        assert_eq!(
            summary(2, &err),
            "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn reprieves_what_still_fits_and_respects_budgets() {
        let mut a = node("a", "3");
        a.add_pod(pod("low", "1", 1, "x"));
        a.add_pod(pod("mid", "1", 2, "x"));
        a.add_pod(pod("guarded", "1", 1, "db"));
        let infos = vec![a];
        // Needs 1 cpu: the least important pod without a budget goes, the others stay.
        let budget = Budget {
            namespace: "default".into(),
            selector: LabelSelector {
                match_labels: Some([("app".to_string(), "db".to_string())].into()),
                ..LabelSelector::default()
            },
            allowed: 0,
        };
        let plan = plan(&pod("new", "1", 100, "y"), &infos, &[budget]).expect("plan");
        assert_eq!(names(&plan), ["low"]);
        // Needs 2: two go, still sparing the guarded one.
        let plan2 = super::plan(&pod("new", "2", 100, "y"), &infos, &[]).expect("plan");
        assert_eq!(plan2.victims.len(), 2);
    }
}
