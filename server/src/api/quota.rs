//! ResourceQuota admission: a create that would take a namespace past one of its quotas' `hard`
//! limits is refused 403 with upstream's wording (`exceeded quota: <name>, requested: ...,
//! used: ..., limited: ...`), and a pod that omits a request or limit a quota tracks is refused
//! (`failed quota: <name>: must specify ...`). [`usage`] is what one object counts against a
//! quota; the quota controller (`controllers/resourcequota.rs`) sums the same function into
//! `status.used`.
//!
//! Tracked: `pods`, `services`, `services.loadbalancers`, `services.nodeports`, `configmaps`,
//! `secrets`, `persistentvolumeclaims`, `resourcequotas`, `requests.storage`, `count/<plural>`
//! (core) and `count/<plural>.<group>` for every resource, and the pod compute resources
//! `requests.cpu`/`cpu`, `requests.memory`/`memory`, `limits.cpu`, `limits.memory` and their
//! `ephemeral-storage` forms. Pods that finished (`Succeeded`/`Failed`) count for nothing.
//! Scoped quotas (`Terminating`, `NotTerminating`, `BestEffort`, `NotBestEffort`, and the
//! `PriorityClass` scope selector) track only the pods in their scopes.
//!
//! Invariant: usage is summed from the stored objects at admission time, and admissions of
//! objects that a quota tracks are serialized with their store write by one process-wide lock
//! (r3s has a single API server per datastore), so two concurrent creates can never both take
//! the last unit. Updates are checked for what they add (a Service becoming a LoadBalancer).

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::ApiError;
use super::object;
use super::quantity::Quantity;
use super::registry::{self, Resource};
use crate::store::{ListOptions, Store};

/// Serializes quota admission with the store write it admits.
static ADMISSION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held from admission until the admitted object is stored.
pub type Guard = tokio::sync::MutexGuard<'static, ()>;

/// The pod compute resources a quota can track: (quota name, container field, resource).
const COMPUTE: &[(&str, &str, &str)] = &[
    ("requests.cpu", "requests", "cpu"),
    ("cpu", "requests", "cpu"),
    ("requests.memory", "requests", "memory"),
    ("memory", "requests", "memory"),
    (
        "requests.ephemeral-storage",
        "requests",
        "ephemeral-storage",
    ),
    ("ephemeral-storage", "requests", "ephemeral-storage"),
    ("limits.cpu", "limits", "cpu"),
    ("limits.memory", "limits", "memory"),
    ("limits.ephemeral-storage", "limits", "ephemeral-storage"),
];

/// The `count/...` name of a resource.
pub fn count_name(res: &Resource) -> String {
    if res.group.is_empty() {
        format!("count/{}", res.plural)
    } else {
        format!("count/{}.{}", res.plural, res.group)
    }
}

fn finished(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// One resource of a pod: the sum over its containers, or the largest init container's value
/// when that is larger (init containers run one at a time), plus `spec.overhead`.
fn pod_resource(pod: &Value, field: &str, resource: &str) -> Quantity {
    let of = |c: &Value| {
        c["resources"][field][resource]
            .as_str()
            .and_then(Quantity::parse)
    };
    let containers = pod["spec"]["containers"].as_array();
    let sum = containers
        .into_iter()
        .flatten()
        .filter_map(of)
        .fold(Quantity::ZERO, Quantity::plus);
    let init = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(of)
        .max()
        .unwrap_or(Quantity::ZERO);
    let base = if init > sum { init } else { sum };
    match pod["spec"]["overhead"][resource]
        .as_str()
        .and_then(Quantity::parse)
    {
        Some(overhead) => base.plus(overhead),
        None => base,
    }
}

/// What one object of `res` counts against a quota, by quota resource name.
pub fn usage(res: &Resource, obj: &Value) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    let core = res.group.is_empty();
    if core && res.plural == "pods" && finished(obj) {
        return out;
    }
    out.insert(count_name(res), Quantity::count(1));
    if !core {
        return out;
    }
    match res.plural {
        "pods" => {
            out.insert("pods".into(), Quantity::count(1));
            for (name, field, resource) in COMPUTE {
                let q = pod_resource(obj, field, resource);
                if q.milli != 0 {
                    out.insert((*name).into(), q);
                }
            }
        }
        "services" => {
            out.insert("services".into(), Quantity::count(1));
            let kind = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if kind == "LoadBalancer" {
                out.insert("services.loadbalancers".into(), Quantity::count(1));
            }
            if matches!(kind, "LoadBalancer" | "NodePort") {
                let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len);
                out.insert("services.nodeports".into(), Quantity::count(ports as i128));
            }
        }
        "persistentvolumeclaims" => {
            out.insert("persistentvolumeclaims".into(), Quantity::count(1));
            let storage = obj["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(Quantity::parse)
                .unwrap_or(Quantity::ZERO);
            out.insert("requests.storage".into(), storage);
            if let Some(class) = obj["spec"]["storageClassName"]
                .as_str()
                .filter(|c| !c.is_empty())
            {
                let prefix = format!("{class}.storageclass.storage.k8s.io/");
                out.insert(format!("{prefix}requests.storage"), storage);
                out.insert(
                    format!("{prefix}persistentvolumeclaims"),
                    Quantity::count(1),
                );
            }
        }
        "configmaps" | "secrets" | "resourcequotas" => {
            out.insert(res.plural.into(), Quantity::count(1));
        }
        _ => {}
    }
    out
}

/// The containers of a pod missing `field.resource` (for `must specify`).
fn missing(pod: &Value, field: &str, resource: &str) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter(|c| c["resources"][field][resource].is_null())
        .map(|c| c["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn best_effort(pod: &Value) -> bool {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .all(|c| {
            let empty = |m: &Value| m.as_object().is_none_or(serde_json::Map::is_empty);
            empty(&c["resources"]["requests"]) && empty(&c["resources"]["limits"])
        })
}

/// Whether a pod is in one quota scope (`Terminating`: has `activeDeadlineSeconds`,
/// `BestEffort`: no requests or limits at all, `PriorityClass`: by `priorityClassName`).
fn in_scope(pod: &Value, scope: &str, operator: &str, values: &[&str]) -> bool {
    let terminating = pod["spec"]["activeDeadlineSeconds"].is_i64();
    let class = pod["spec"]["priorityClassName"].as_str().unwrap_or("");
    let is = match scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort(pod),
        "NotBestEffort" => !best_effort(pod),
        "PriorityClass" => match operator {
            "In" => values.contains(&class),
            "NotIn" => !values.contains(&class),
            "Exists" => !class.is_empty(),
            "DoesNotExist" => class.is_empty(),
            _ => false,
        },
        // CrossNamespacePodAffinity and scopes r3s does not know match nothing.
        _ => false,
    };
    match (scope, operator) {
        ("PriorityClass", _) | (_, "Exists" | "") => is,
        (_, "DoesNotExist") => !is,
        _ => false,
    }
}

/// Whether `quota` tracks `obj` (a `res`): unscoped quotas track everything; scoped ones
/// (`spec.scopes`, `spec.scopeSelector`) only pods in every scope.
pub fn applies(quota: &Value, res: &Resource, obj: &Value) -> bool {
    let scopes: Vec<&str> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let selector = quota["spec"]["scopeSelector"]["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if scopes.is_empty() && selector.is_empty() {
        return true;
    }
    if !(res.group.is_empty() && res.plural == "pods") {
        return false;
    }
    scopes.iter().all(|s| in_scope(obj, s, "Exists", &[]))
        && selector.iter().all(|e| {
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            in_scope(
                obj,
                e["scopeName"].as_str().unwrap_or(""),
                e["operator"].as_str().unwrap_or(""),
                &values,
            )
        })
}

/// `hard` of a quota, parsed (unparseable values are skipped: validation refuses them).
pub fn hard(quota: &Value) -> BTreeMap<String, Quantity> {
    quota["spec"]["hard"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Quantity::parse(v.as_str()?)?)))
        .collect()
}

/// Sums [`usage`] over objects.
pub fn total<'a>(
    res: &Resource,
    objects: impl IntoIterator<Item = &'a Value>,
) -> BTreeMap<String, Quantity> {
    let mut sum: BTreeMap<String, Quantity> = BTreeMap::new();
    for obj in objects {
        for (name, q) in usage(res, obj) {
            let entry = sum.entry(name).or_insert(Quantity::ZERO);
            *entry = entry.plus(q);
        }
    }
    sum
}

fn list(store: &dyn Store, res: &Resource, namespace: &str) -> Result<Vec<Value>, ApiError> {
    let page = store
        .list(&res.list_prefix(Some(namespace)), &ListOptions::default())
        .map_err(|e| ApiError::from_store(e, &res.name(), ""))?;
    page.items.iter().map(object::from_store).collect()
}

fn pretty(map: &BTreeMap<String, Quantity>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Admits the creation of `obj` (a `res` in `namespace`) against the namespace's quotas. The
/// returned guard must be held until the object is stored.
pub async fn admit(
    store: &dyn Store,
    res: &Resource,
    namespace: Option<&str>,
    obj: &Value,
) -> Result<Option<Guard>, ApiError> {
    admit_change(store, res, namespace, None, obj).await
}

/// As [`admit`], for an update of `old` to `obj` (or a create without `old`): only what the
/// change adds is requested (a Service turning into a LoadBalancer asks for
/// `services.loadbalancers=1`), measured against usage that already includes `old`.
pub async fn admit_change(
    store: &dyn Store,
    res: &Resource,
    namespace: Option<&str>,
    old: Option<&Value>,
    obj: &Value,
) -> Result<Option<Guard>, ApiError> {
    let Some(namespace) = namespace else {
        return Ok(None);
    };
    let quotas_res = registry::find("", "v1", "resourcequotas")
        .ok_or_else(|| ApiError::Internal("resourcequotas are not registered".into()))?;
    let mut requested = usage(res, obj);
    if let Some(old) = old {
        let before = usage(res, old);
        requested = requested
            .into_iter()
            .filter_map(|(k, q)| {
                let was = before.get(&k).copied().unwrap_or(Quantity::ZERO);
                (q > was).then(|| (k, q.minus(was)))
            })
            .collect();
    }
    if requested.is_empty() {
        return Ok(None);
    }
    let quotas = list(store, quotas_res, namespace)?;
    let tracked = |quota: &Value| {
        if !applies(quota, res, obj) {
            return false;
        }
        let hard = hard(quota);
        requested.keys().any(|k| hard.contains_key(k))
            || (res.group.is_empty()
                && res.plural == "pods"
                && COMPUTE.iter().any(|(n, _, _)| hard.contains_key(*n)))
    };
    if !quotas.iter().any(tracked) {
        return Ok(None);
    }
    let guard = ADMISSION.lock().await;
    // Re-read under the lock: usage now includes every admission that finished before us.
    let quotas = list(store, quotas_res, namespace)?;
    let existing = list(store, res, namespace)?;
    // Pods' resources are fixed once created: only creates must name them.
    let is_pod = res.group.is_empty() && res.plural == "pods" && old.is_none();
    let mut quotas = quotas;
    quotas.sort_by(|a, b| object::name(a).cmp(object::name(b)));
    for quota in quotas.iter().filter(|q| applies(q, res, obj)) {
        let name = object::name(quota);
        let used = total(res, existing.iter().filter(|o| applies(quota, res, o)));
        let hard = hard(quota);
        if is_pod {
            // Only cpu and memory must be explicit (upstream's backward-compatible rule), listed
            // by resource name, each with its containers in name order.
            let mut problems = BTreeMap::new();
            for (quota_name, field, resource) in COMPUTE {
                if !hard.contains_key(*quota_name) || resource.starts_with("ephemeral") {
                    continue;
                }
                let mut lacking = missing(obj, field, resource);
                lacking.sort();
                lacking.dedup();
                if !lacking.is_empty() {
                    problems.insert(
                        *quota_name,
                        format!("{quota_name} for: {}", lacking.join(",")),
                    );
                }
            }
            let problems: Vec<String> = problems.into_values().collect();
            if !problems.is_empty() {
                return Err(forbidden(
                    res,
                    obj,
                    &format!("failed quota: {name}: must specify {}", problems.join("; ")),
                ));
            }
        }
        let (mut want, mut have, mut limit) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (key, amount) in &requested {
            let Some(max) = hard.get(key) else {
                continue;
            };
            let current = used.get(key).copied().unwrap_or(Quantity::ZERO);
            if current.plus(*amount) > *max {
                want.insert(key.clone(), *amount);
                have.insert(key.clone(), current);
                limit.insert(key.clone(), *max);
            }
        }
        if !want.is_empty() {
            return Err(forbidden(
                res,
                obj,
                &format!(
                    "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                    pretty(&want),
                    pretty(&have),
                    pretty(&limit)
                ),
            ));
        }
    }
    Ok(Some(guard))
}

fn forbidden(res: &Resource, obj: &Value, why: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "{} \"{}\" is forbidden: {why}",
        res.name(),
        object::name(obj)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_count_containers_and_the_largest_init_container() {
        let pods = registry::find("", "v1", "pods").expect("pods");
        let pod = json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"},
                                            "limits": {"memory": "128Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "700m", "memory": "64Mi"}}}]}});
        let u = usage(pods, &pod);
        assert_eq!(u["pods"].to_string(), "1");
        assert_eq!(u["count/pods"].to_string(), "1");
        assert_eq!(u["requests.cpu"].to_string(), "2");
        assert_eq!(u["requests.memory"].to_string(), "128Mi");
        assert_eq!(u["limits.memory"].to_string(), "128Mi");
        assert!(!u.contains_key("limits.cpu"));
        let done = json!({"spec": pod["spec"], "status": {"phase": "Succeeded"}});
        assert!(usage(pods, &done).is_empty());
        assert_eq!(missing(&pod, "limits", "memory"), vec!["i", "b"]);
    }

    #[test]
    fn services_and_claims_count_their_kinds() {
        let svc = registry::find("", "v1", "services").expect("services");
        let lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage(svc, &lb);
        assert_eq!(u["services.loadbalancers"].to_string(), "1");
        assert_eq!(u["services.nodeports"].to_string(), "2");
        let deploy = registry::find("apps", "v1", "deployments").expect("deployments");
        assert_eq!(
            usage(deploy, &json!({})).keys().collect::<Vec<_>>(),
            vec!["count/deployments.apps"]
        );
    }
}
