//! Filters (can this pod run on this node?) and scores (how good is it?). Pure functions over a
//! [`NodeInfo`] snapshot, so each rule is unit-tested with plain values.
//!
//! Filters run in upstream's order (unschedulable, node name, taints, node affinity / selector, host
//! ports, resources) and stop at the first that fails, except resources, which reports every
//! insufficient resource. Reasons use upstream's wording, since users paste them into searches.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Taint, Toleration};

use super::resources::{self, Resources};
use crate::controllers::selector;

/// A node and what is already bound (or assumed bound) to it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// Shared with the watch cache: a cycle copies no node and no pod.
    pub node: Arc<Node>,
    pub requested: Resources,
    /// Requests with scoring defaults, for least-allocated and balanced scores.
    pub scoring_requested: Resources,
    pub pod_count: i64,
    /// (protocol, hostPort) pairs in use.
    pub host_ports: HashSet<(String, i32)>,
    /// The pods placed here, for inter-pod affinity and topology spread.
    pub pods: Vec<Arc<Pod>>,
    /// Those of [`NodeInfo::pods`] with required anti-affinity terms (usually none), so the
    /// symmetric anti-affinity check does not walk every pod for every candidate.
    pub anti_affinity_pods: Vec<Arc<Pod>>,
}

impl NodeInfo {
    pub fn new(node: impl Into<Arc<Node>>) -> NodeInfo {
        NodeInfo {
            node: node.into(),
            ..NodeInfo::default()
        }
    }

    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        resources::accumulate(&mut self.requested, &resources::pod_requests(&pod));
        resources::accumulate(
            &mut self.scoring_requested,
            &resources::pod_requests_for_scoring(&pod),
        );
        self.pod_count += 1;
        self.host_ports.extend(host_ports(&pod));
        let has_anti = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty());
        if has_anti {
            self.anti_affinity_pods.push(pod.clone());
        }
        self.pods.push(pod);
    }

    fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    fn allocatable(&self) -> Resources {
        let status = self.node.status.as_ref();
        Resources::from_map(
            status
                .and_then(|s| s.allocatable.as_ref())
                .or_else(|| status.and_then(|s| s.capacity.as_ref())),
        )
    }
}

fn host_ports(pod: &Pod) -> impl Iterator<Item = (String, i32)> + '_ {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), port))
        })
}

/// True if `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    key == taint.key
        && (exists
            || toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""))
}

/// The node's taints, plus the not-ready taint for a node whose Ready condition is not True but
/// that nobody tainted yet (the node lifecycle controller will): such a node is never a fit.
fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let tainted = taints.iter().any(|t| {
        t.key == "node.kubernetes.io/not-ready" || t.key == "node.kubernetes.io/unreachable"
    });
    if !ready && !tainted {
        taints.push(Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        });
    }
    taints
}

/// True if the node satisfies the pod's nodeSelector and required node affinity.
pub fn node_affinity_fits(pod: &Pod, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let by_selector = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let by_affinity = required.is_none_or(|req| {
        req.node_selector_terms.iter().any(|term| {
            let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
            let fields = term.match_fields.as_deref().unwrap_or(&[]);
            if exprs.is_empty() && fields.is_empty() {
                return false;
            }
            let name_map: BTreeMap<String, String> = [(
                "metadata.name".to_string(),
                node.metadata.name.clone().unwrap_or_default(),
            )]
            .into();
            selector::node_requirements(exprs, labels)
                && selector::node_requirements(fields, &name_map)
        })
    });
    by_selector && by_affinity
}

/// Why `pod` cannot run on `info`, as upstream's reason strings; empty if it fits.
pub fn filter(pod: &Pod, info: &NodeInfo) -> Vec<String> {
    let node = &info.node;
    // Borrowed, not cloned: this runs for every (pending pod, node) pair of a cycle.
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
        && !spec.tolerations.iter().flatten().any(|t| {
            tolerates(
                t,
                &Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                },
            )
        })
    {
        return vec!["node(s) were unschedulable".into()];
    }
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != info.name())
    {
        return vec!["node(s) didn't match the requested node name".into()];
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    if let Some(taint) = effective_taints(node)
        .into_iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or("")
        )];
    }
    if !node_affinity_fits(pod, node) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    if host_ports(pod).any(|p| info.host_ports.contains(&p)) {
        return vec!["node(s) didn't have free ports for the requested pod ports".into()];
    }
    let alloc = info.allocatable();
    let want = resources::pod_requests(pod);
    let mut reasons = Vec::new();
    let max_pods = alloc.other.get("pods").copied().unwrap_or(110);
    if info.pod_count + 1 > max_pods {
        reasons.push("Too many pods".to_string());
    }
    if want.milli_cpu > 0 && info.requested.milli_cpu + want.milli_cpu > alloc.milli_cpu {
        reasons.push("Insufficient cpu".into());
    }
    if want.memory > 0 && info.requested.memory + want.memory > alloc.memory {
        reasons.push("Insufficient memory".into());
    }
    for (name, amount) in want.other.iter().filter(|(_, a)| **a > 0) {
        let have = alloc.other.get(name).copied().unwrap_or(0);
        let used = info.requested.other.get(name).copied().unwrap_or(0);
        if used + amount > have {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

/// Score in 0..=200: least allocated (free share of CPU and memory) plus balanced allocation.
pub fn score(pod: &Pod, info: &NodeInfo) -> i64 {
    let alloc = info.allocatable();
    let want = resources::pod_requests_for_scoring(pod);
    let fraction = |used: i64, cap: i64| -> f64 {
        if cap <= 0 {
            1.0
        } else {
            #[allow(clippy::cast_precision_loss)]
            let f = used as f64 / cap as f64;
            f.min(1.0)
        }
    };
    let cpu = fraction(
        info.scoring_requested.milli_cpu + want.milli_cpu,
        alloc.milli_cpu,
    );
    let mem = fraction(info.scoring_requested.memory + want.memory, alloc.memory);
    let least = ((1.0 - cpu) + (1.0 - mem)) / 2.0 * 100.0;
    let balanced = (1.0 - (cpu - mem).abs()) * 100.0;
    #[allow(clippy::cast_possible_truncation)]
    let total = (least + balanced).round() as i64;
    total
}

/// Upstream's summary of why no node fits, when preemption cannot help on any node: `0/3 nodes are
/// available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}. preemption: 0/3 nodes are
/// available: 3 Preemption is not helpful for scheduling.`
pub fn unschedulable_message(total_nodes: usize, reasons: &[Vec<String>]) -> String {
    format!(
        "{} preemption: 0/{total_nodes} nodes are available: {total_nodes} Preemption is not helpful for scheduling.",
        unschedulable_head(total_nodes, reasons)
    )
}

/// The first sentence of [`unschedulable_message`] (`0/3 nodes are available: …`, with its
/// period); the preemption sentence follows it.
pub fn unschedulable_head(total_nodes: usize, reasons: &[Vec<String>]) -> String {
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons.iter().flatten() {
        *histogram.entry(r.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = histogram
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    parts.sort();
    let head = if parts.is_empty() {
        format!("0/{total_nodes} nodes are available")
    } else {
        format!("0/{total_nodes} nodes are available: {}", parts.join(", "))
    };
    format!("{head}.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, NodeCondition, NodeSpec, NodeStatus, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cpu: &str) -> NodeInfo {
        NodeInfo::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("disk".to_string(), "ssd".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity("4Gi".into())),
                        ("pods".to_string(), Quantity("110".into())),
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
        })
    }

    fn pod(cpu: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
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
        }
    }

    fn check(pod: &Pod, info: &NodeInfo, want: &[&str]) {
        assert_eq!(filter(pod, info), want);
    }

    #[test]
    fn filters_explain_themselves() {
        let mut n = node("n1", "1");
        check(&pod("500m"), &n, &[]);
        check(&pod("2"), &n, &["Insufficient cpu"]);
        n.add_pod(pod("600m").into());
        check(&pod("500m"), &n, &["Insufficient cpu"]);

        let mut tainted = node("n2", "4");
        Arc::make_mut(&mut tainted.node).spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            ..NodeSpec::default()
        });
        check(
            &pod("1"),
            &tainted,
            &["node(s) had untolerated taint {dedicated: gpu}"],
        );
        let mut tolerant = pod("1");
        if let Some(s) = tolerant.spec.as_mut() {
            s.tolerations = Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("gpu".into()),
                ..Toleration::default()
            }]);
        }
        check(&tolerant, &tainted, &[]);

        let mut picky = pod("1");
        if let Some(s) = picky.spec.as_mut() {
            s.node_selector = Some([("disk".to_string(), "hdd".to_string())].into());
        }
        check(
            &picky,
            &node("n3", "4"),
            &["node(s) didn't match Pod's node affinity/selector"],
        );
    }

    #[test]
    fn summary_matches_upstream() {
        let msg = unschedulable_message(
            3,
            &[
                vec!["Insufficient cpu".into()],
                vec!["node(s) had untolerated taint {k: v}".into()],
                vec!["node(s) had untolerated taint {k: v}".into()],
            ],
        );
        assert_eq!(
            msg,
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn emptier_nodes_score_higher() {
        let empty = node("a", "4");
        let mut busy = node("b", "4");
        busy.add_pod(pod("3").into());
        assert!(score(&pod("100m"), &empty) > score(&pod("100m"), &busy));
    }
}
