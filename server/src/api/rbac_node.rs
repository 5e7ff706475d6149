//! The node authorizer: what a node agent (user `system:node:<name>`, group `system:nodes`) may
//! do, narrowed to its own node as upstream's Node authorizer and NodeRestriction admission do.
//!
//! A node may read nodes, services, endpoints, endpoint slices and pods; write its own Node (and
//! status), its own Lease in `kube-node-lease`, the status of pods bound to it, delete and evict
//! pods bound to it; create events; get the configmaps, secrets, PVCs and ServiceAccounts that
//! pods bound to it reference (and the PVs behind those PVCs), and request tokens for the
//! ServiceAccounts of those pods, each bound to one of them (not read the ServiceAccounts
//! themselves, as upstream's). Writes to another node's Node or Lease are refused outright (with
//! NodeRestriction's wording); anything else gets no opinion here and falls through to RBAC, with
//! the reason added to the 403 message when RBAC refuses too.
//!
//! Authorization runs before the body is read, so a Node or Lease *create* is allowed here whatever
//! its name; [`check_create`] is the admission-time check (upstream's NodeRestriction) the create
//! handlers (create, create-on-apply) call once they have the decoded object.

use serde_json::Value;

use super::auth::{Attributes, UserInfo};
use super::error::ApiError;
use super::{object, registry};
use crate::store::{ListOptions, Store};

/// The namespace of node heartbeat Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What the node authorizer says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused whatever RBAC says; the full message.
    Deny(String),
    /// Up to RBAC; the reason is added to the message if RBAC refuses.
    NoOpinion(Option<String>),
}

/// The node name of a node identity, if `user` is one.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    let name = user.username.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == "system:nodes")).then_some(name)
}

/// Decides `attrs` for `user` as the node authorizer.
pub fn decide(
    store: &dyn Store,
    user: &UserInfo,
    a: &Attributes<'_>,
) -> Result<Decision, ApiError> {
    let Some(node) = node_of(user) else {
        return Ok(Decision::NoOpinion(None));
    };
    let read = matches!(a.verb, "get" | "list" | "watch");
    let own = a.name == Some(node);
    let no_relationship = || {
        Decision::NoOpinion(Some(format!(
            "no relationship found between node '{node}' and this object"
        )))
    };
    let allow = |yes: bool| {
        if yes {
            Decision::Allow
        } else {
            no_relationship()
        }
    };
    let decision = match (a.group, a.resource, a.subresource, a.verb) {
        ("", "nodes", None | Some("status"), _) if read => Decision::Allow,
        // The name is in the body, which authorization does not see (see the module docs).
        ("", "nodes", None, "create") => Decision::Allow,
        ("", "nodes", None, "update" | "patch" | "delete")
        | ("", "nodes", Some("status"), "update" | "patch") => {
            if own {
                Decision::Allow
            } else {
                Decision::Deny(format!(
                    "nodes \"{}\" is forbidden: node \"{node}\" is not allowed to modify node \"{}\"",
                    a.name.unwrap_or(""),
                    a.name.unwrap_or("")
                ))
            }
        }
        ("coordination.k8s.io", "leases", None, verb) if a.namespace == Some(LEASE_NAMESPACE) => {
            match verb {
                "get" | "list" | "watch" | "create" => Decision::Allow,
                "update" | "patch" | "delete" if own => Decision::Allow,
                _ => Decision::Deny(format!(
                    "leases.coordination.k8s.io \"{}\" is forbidden: node \"{node}\" can only access node lease with the same name as the requesting node",
                    a.name.unwrap_or("")
                )),
            }
        }
        ("", "pods", None, _) if read => Decision::Allow,
        ("", "pods", None, "delete")
        | ("", "pods", Some("status"), "get" | "update" | "patch")
        | ("", "pods", Some("eviction"), "create") => allow(pod_is_bound(store, a, node)?),
        ("" | "events.k8s.io", "events", None, "create" | "update" | "patch") => Decision::Allow,
        ("", "services" | "endpoints", None, _)
        | ("discovery.k8s.io", "endpointslices", None, _)
            if read =>
        {
            Decision::Allow
        }
        ("", "configmaps" | "secrets" | "persistentvolumeclaims", None, "get")
        // The pod binding of the token is checked on the request body (upstream's
        // NodeRestriction: `serviceaccount::token_binding`).
        | ("", "serviceaccounts", Some("token"), "create") => {
            allow(referenced_by_pod(store, a, node)?)
        }
        ("", "configmaps" | "secrets" | "persistentvolumeclaims" | "serviceaccounts", None, _) => {
            no_relationship()
        }
        ("", "persistentvolumes", None, "get") => allow(volume_of_pod(store, a, node)?),
        ("authentication.k8s.io", "tokenreviews", None, "create")
        | ("authorization.k8s.io", "subjectaccessreviews", None, "create") => Decision::Allow,
        _ => Decision::NoOpinion(None),
    };
    Ok(decision)
}

/// NodeRestriction for creates: a node may create only the Node and the `kube-node-lease` Lease
/// named after itself, and only mirror pods bound to itself. Anything else passes (authorization
/// already decided it).
pub fn check_create(
    user: &UserInfo,
    group: &str,
    plural: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    let Some(node) = node_of(user) else {
        return Ok(());
    };
    let name = object::name(obj);
    match (group, plural) {
        ("", "nodes") if name != node => Err(ApiError::Forbidden(format!(
            "nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\""
        ))),
        ("coordination.k8s.io", "leases") if name != node => Err(ApiError::Forbidden(format!(
            "leases.coordination.k8s.io \"{name}\" is forbidden: node \"{node}\" can only access node lease with the same name as the requesting node"
        ))),
        // A node only creates mirror pods of its own static pods.
        ("", "pods") if obj["spec"]["nodeName"].as_str() != Some(node) => {
            Err(ApiError::Forbidden(format!(
                "pods \"{name}\" is forbidden: node \"{node}\" can only create pods with spec.nodeName set to itself"
            )))
        }
        ("", "pods") if obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() => {
            Err(ApiError::Forbidden(format!(
                "pods \"{name}\" is forbidden: pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
            )))
        }
        _ => Ok(()),
    }
}

fn resource(plural: &str) -> Result<&'static registry::Resource, ApiError> {
    registry::find("", "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))
}

/// Pods bound to `node`, in `namespace` or everywhere.
fn pods_on(store: &dyn Store, namespace: Option<&str>, node: &str) -> Result<Vec<Value>, ApiError> {
    let pods = resource("pods")?;
    let page = store
        .list(&pods.list_prefix(namespace), &ListOptions::default())
        .map_err(|e| ApiError::from_store(e, &pods.name(), ""))?;
    let mut bound = Vec::new();
    for kv in &page.items {
        let pod = object::from_store(kv)?;
        if pod["spec"]["nodeName"].as_str() == Some(node) {
            bound.push(pod);
        }
    }
    Ok(bound)
}

fn pod_is_bound(store: &dyn Store, a: &Attributes<'_>, node: &str) -> Result<bool, ApiError> {
    let (Some(ns), Some(name)) = (a.namespace, a.name) else {
        return Ok(false);
    };
    let pods = resource("pods")?;
    let Some(kv) = store
        .get(&pods.key(Some(ns), name))
        .map_err(|e| ApiError::from_store(e, &pods.name(), name))?
    else {
        return Ok(false);
    };
    Ok(object::from_store(&kv)?["spec"]["nodeName"].as_str() == Some(node))
}

fn referenced_by_pod(store: &dyn Store, a: &Attributes<'_>, node: &str) -> Result<bool, ApiError> {
    let (Some(ns), Some(name)) = (a.namespace, a.name) else {
        return Ok(false);
    };
    Ok(pods_on(store, Some(ns), node)?
        .iter()
        .any(|pod| references(pod).contains(&(a.resource, name.to_owned()))))
}

fn volume_of_pod(store: &dyn Store, a: &Attributes<'_>, node: &str) -> Result<bool, ApiError> {
    let Some(name) = a.name else {
        return Ok(false);
    };
    let claims = resource("persistentvolumeclaims")?;
    for pod in pods_on(store, None, node)? {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        for (kind, claim) in references(&pod) {
            if kind != "persistentvolumeclaims" {
                continue;
            }
            let kv = store
                .get(&claims.key(Some(ns), &claim))
                .map_err(|e| ApiError::from_store(e, &claims.name(), &claim))?;
            if let Some(kv) = kv
                && object::from_store(&kv)?["spec"]["volumeName"].as_str() == Some(name)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Every (resource plural, name) a pod refers to: volumes (also projected), env and envFrom of
/// every container kind, image pull secrets and its ServiceAccount.
pub fn references(pod: &Value) -> Vec<(&'static str, String)> {
    let mut refs = Vec::new();
    let mut add = |kind: &'static str, name: &Value| {
        if let Some(n) = name.as_str().filter(|n| !n.is_empty()) {
            refs.push((kind, n.to_owned()));
        }
    };
    let spec = &pod["spec"];
    let sa = spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    add("serviceaccounts", &Value::String(sa.to_owned()));
    for s in items(&spec["imagePullSecrets"]) {
        add("secrets", &s["name"]);
    }
    for v in items(&spec["volumes"]) {
        add("configmaps", &v["configMap"]["name"]);
        add("secrets", &v["secret"]["secretName"]);
        add(
            "persistentvolumeclaims",
            &v["persistentVolumeClaim"]["claimName"],
        );
        for source in items(&v["projected"]["sources"]) {
            add("configmaps", &source["configMap"]["name"]);
            add("secrets", &source["secret"]["name"]);
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in items(&spec[list]) {
            for e in items(&c["env"]) {
                add("configmaps", &e["valueFrom"]["configMapKeyRef"]["name"]);
                add("secrets", &e["valueFrom"]["secretKeyRef"]["name"]);
            }
            for e in items(&c["envFrom"]) {
                add("configmaps", &e["configMapRef"]["name"]);
                add("secrets", &e["secretRef"]["name"]);
            }
        }
    }
    refs
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_references_cover_volumes_env_and_pull_secrets() {
        let pod = json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"configMap": {"name": "cm"}}, {"secret": {"secretName": "vol"}},
                        {"persistentVolumeClaim": {"claimName": "data"}},
                        {"projected": {"sources": [{"secret": {"name": "proj"}}]}}],
            "initContainers": [{"envFrom": [{"configMapRef": {"name": "init-cm"}}]}],
            "containers": [{"env": [{"valueFrom": {"secretKeyRef": {"name": "envsec", "key": "k"}}}]}],
        }});
        let refs = references(&pod);
        for want in [
            ("serviceaccounts", "default"),
            ("secrets", "pull"),
            ("configmaps", "cm"),
            ("secrets", "vol"),
            ("persistentvolumeclaims", "data"),
            ("secrets", "proj"),
            ("configmaps", "init-cm"),
            ("secrets", "envsec"),
        ] {
            assert!(
                refs.contains(&(want.0, want.1.to_owned())),
                "{want:?} in {refs:?}"
            );
        }
    }

    #[test]
    fn creates_are_restricted_to_the_nodes_own_name() {
        let n1 = UserInfo {
            username: "system:node:n1".into(),
            groups: vec!["system:nodes".into()],
            ..Default::default()
        };
        let named = |n: &str| json!({"metadata": {"name": n}});
        assert!(check_create(&n1, "", "nodes", &named("n1")).is_ok());
        assert!(check_create(&n1, "", "nodes", &named("n2")).is_err());
        assert!(check_create(&n1, "coordination.k8s.io", "leases", &named("n1")).is_ok());
        assert!(check_create(&n1, "coordination.k8s.io", "leases", &named("n2")).is_err());
        assert!(check_create(&n1, "", "events", &named("anything")).is_ok());
        let pod = |node: &str, mirror: bool| {
            let mut p = json!({"metadata": {"name": "p"}, "spec": {"nodeName": node}});
            if mirror {
                p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
            }
            p
        };
        assert!(check_create(&n1, "", "pods", &pod("n1", true)).is_ok());
        assert!(check_create(&n1, "", "pods", &pod("n2", true)).is_err());
        assert!(check_create(&n1, "", "pods", &pod("n1", false)).is_err());
        let admin = UserInfo {
            username: "system:admin".into(),
            groups: vec!["system:masters".into()],
            ..Default::default()
        };
        assert!(check_create(&admin, "", "nodes", &named("n2")).is_ok());
    }

    #[test]
    fn only_node_identities_are_nodes() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            node_of(&user("system:node:pi", &["system:nodes"])),
            Some("pi")
        );
        assert_eq!(node_of(&user("system:node:pi", &["devs"])), None);
        assert_eq!(node_of(&user("system:node:", &["system:nodes"])), None);
        assert_eq!(node_of(&user("bob", &["system:nodes"])), None);
    }
}
