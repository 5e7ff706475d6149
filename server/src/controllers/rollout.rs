//! The pure arithmetic of Deployment rollouts: pod-template hashes, defaults, and how many replicas
//! each ReplicaSet should have next under RollingUpdate (maxSurge / maxUnavailable). No I/O here,
//! so every rule is unit-tested with plain numbers.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The label (and selector key) that ties a ReplicaSet and its pods to one pod template.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation on Deployments and their ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a reused ReplicaSet had (after `rollout undo`).
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// The characters upstream uses for generated name suffixes (no vowels, no confusable digits).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A Deployment's spec with upstream's defaults filled in (the API server stores specs as sent).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub replicas: i32,
    pub recreate: bool,
    pub max_surge: i32,
    pub max_unavailable: i32,
    pub revision_history_limit: i32,
    pub progress_deadline_seconds: Option<i32>,
    pub min_ready_seconds: i32,
    pub paused: bool,
}

/// Resolves `value` (an int or a percentage of `total`) rounding up or down.
fn scaled(value: Option<&IntOrString>, default: &str, total: i32, round_up: bool) -> i32 {
    let owned;
    let value = match value {
        Some(v) => v,
        None => {
            owned = IntOrString::String(default.into());
            &owned
        }
    };
    match value {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(s) => {
            let Some(p) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return s.parse::<i32>().unwrap_or(0).max(0);
            };
            let product = p * i64::from(total);
            let v = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            i32::try_from(v.max(0)).unwrap_or(i32::MAX)
        }
    }
}

pub fn settings(d: &Deployment) -> Settings {
    let spec = d.spec.clone();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let strategy = spec.strategy.unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let rolling = strategy.rolling_update.unwrap_or_default();
    let mut max_surge = scaled(rolling.max_surge.as_ref(), "25%", replicas, true);
    let max_unavailable = scaled(rolling.max_unavailable.as_ref(), "25%", replicas, false);
    // Both zero would deadlock a rollout; upstream then allows one unavailable pod.
    let max_unavailable = if max_surge == 0 && max_unavailable == 0 {
        1
    } else {
        max_unavailable.min(replicas)
    };
    if recreate {
        max_surge = 0;
    }
    Settings {
        replicas,
        recreate,
        max_surge,
        max_unavailable,
        revision_history_limit: spec.revision_history_limit.unwrap_or(10).max(0),
        progress_deadline_seconds: match spec.progress_deadline_seconds {
            // i32::MAX means "never", as upstream.
            Some(i32::MAX) => None,
            Some(s) => Some(s),
            None => Some(600),
        },
        min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        paused: spec.paused.unwrap_or(false),
    }
}

/// Sorts object keys recursively and drops empty values (`null`, `{}`, `[]`), so neither a
/// client's key order nor Go's habit of writing `resources: {}` and `creationTimestamp: null`
/// (kubectl's `rollout undo` sends those) changes what a template is.
fn canonical(value: Value) -> Value {
    let empty = |v: &Value| {
        v.is_null()
            || v.as_object().is_some_and(|o| o.is_empty())
            || v.as_array().is_some_and(|a| a.is_empty())
    };
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map
                .into_iter()
                .map(|(k, v)| (k, canonical(v)))
                .filter(|(_, v)| !empty(v))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// The template as it is compared and hashed: without the `pod-template-hash` label.
pub fn comparable(template: &PodTemplateSpec) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    canonical(serde_json::to_value(&t).unwrap_or(Value::Null))
}

/// `pod-template-hash` of a template (and the Deployment's collision count).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(comparable(template).to_string().as_bytes());
    if let Some(c) = collision_count {
        hasher.update(c.to_be_bytes());
    }
    let digest = hasher.finalize();
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    n.to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// True if the ReplicaSet runs exactly the Deployment's template.
pub fn same_template(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    rs.spec
        .template
        .as_ref()
        .is_some_and(|t| comparable(t) == comparable(template))
}

/// A ReplicaSet's revision annotation (0 if missing or malformed).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The replicas a ReplicaSet accounts for when bounding a rollout: what it asks for, or what it
/// still has if its pods are not gone yet.
pub fn accounted(rs: &ReplicaSet) -> i32 {
    let spec = rs.spec.replicas.unwrap_or(0);
    let status = rs.status.as_ref().map_or(0, |s| s.replicas);
    spec.max(status)
}

pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

/// Available replicas, never more than the ReplicaSet asks for: right after a scale-down its
/// status still counts the pods being removed, and those must not fund further scale-downs.
pub fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(spec_replicas(rs))
}

/// RollingUpdate: the new ReplicaSet's next replica count, given the replicas every ReplicaSet
/// accounts for (`total`, including the new one's `current`).
pub fn new_rs_replicas(s: &Settings, current: i32, total: i32) -> i32 {
    if current >= s.replicas {
        return s.replicas;
    }
    let room = s.replicas + s.max_surge - total;
    if room <= 0 {
        return current;
    }
    current + room.min(s.replicas - current)
}

/// RollingUpdate: how many old replicas may be removed now. `available_total` counts available
/// pods of every ReplicaSet; old unavailable pods can always go (they add nothing to availability).
pub fn old_scale_down_budget(s: &Settings, available_total: i32) -> i32 {
    let min_available = s.replicas - s.max_unavailable;
    (available_total - min_available).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deploy(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        }
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        let s = settings(&deploy(
            10,
            IntOrString::String("25%".into()),
            IntOrString::String("25%".into()),
        ));
        assert_eq!((s.max_surge, s.max_unavailable), (3, 2));
        let s = settings(&deploy(3, IntOrString::Int(0), IntOrString::Int(0)));
        assert_eq!((s.max_surge, s.max_unavailable), (0, 1));
        let s = settings(&Deployment::default());
        assert_eq!((s.replicas, s.max_surge, s.max_unavailable), (1, 1, 0));
        assert_eq!(s.progress_deadline_seconds, Some(600));
    }

    #[test]
    fn new_replica_set_grows_within_the_surge() {
        let s = settings(&deploy(3, IntOrString::Int(1), IntOrString::Int(0)));
        assert_eq!(new_rs_replicas(&s, 0, 3), 1);
        assert_eq!(new_rs_replicas(&s, 1, 4), 1);
        assert_eq!(new_rs_replicas(&s, 1, 3), 2);
        assert_eq!(new_rs_replicas(&s, 5, 5), 3);
        // Old pods can go only while availability stays at 3.
        assert_eq!(old_scale_down_budget(&s, 3), 0);
        assert_eq!(old_scale_down_budget(&s, 4), 1);
    }

    #[test]
    fn hash_ignores_its_own_label_and_key_order() {
        let mut t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..ObjectMeta::default()
            }),
            spec: None,
        };
        let h = template_hash(&t, None);
        assert!(h.bytes().all(|b| ALPHABET.contains(&b)));
        t.metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .map(|l| l.insert(HASH_LABEL.into(), h.clone()));
        assert_eq!(template_hash(&t, None), h);
        assert_ne!(template_hash(&t, Some(1)), h);
    }
}
