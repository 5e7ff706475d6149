//! The default ClusterRoles and ClusterRoleBindings every cluster starts with, as upstream
//! bootstraps them: `cluster-admin` (bound to `system:masters`), the user-facing `admin`, `edit`
//! and `view`, `system:basic-user` (self reviews for every authenticated user), `system:node`
//! (unbound, as upstream: node agents, `CN=system:node:<name>, O=system:nodes`, are authorized by
//! the node authorizer, [`super::rbac_node`]) and `system:node-proxier` bound to `system:nodes`.
//! A `system:node` binding to the whole `system:nodes` group left by an older r3s is removed,
//! since it would let every node write every other node's objects.
//!
//! Upstream builds `admin`/`edit`/`view` by aggregation; r3s writes their rules out for the
//! resources it serves, since it has no aggregation controller. Existing objects are never
//! overwritten: a default ClusterRole only gains the rules a newer r3s added (unless annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "false"`), so an administrator's changes survive
//! restarts. `system:auth-delegator` (token and access reviews) exists unbound, as upstream.

use serde_json::{Value, json};

use super::error::ApiError;
use super::object;
use super::rbac::GROUP;
use super::registry;
use crate::store::{Store, StoreError};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

const CORE_READABLE: &[&str] = &[
    "configmaps",
    "endpoints",
    "events",
    "limitranges",
    "persistentvolumeclaims",
    "persistentvolumeclaims/status",
    "pods",
    "pods/log",
    "pods/status",
    "services",
    "services/status",
    "serviceaccounts",
    "namespaces",
    "namespaces/status",
    "resourcequotas",
    "resourcequotas/status",
];
const APPS: &[&str] = &[
    "deployments",
    "deployments/scale",
    "deployments/status",
    "replicasets",
    "replicasets/scale",
    "replicasets/status",
    "daemonsets",
    "daemonsets/status",
    "statefulsets",
    "statefulsets/scale",
    "statefulsets/status",
];
const BATCH: &[&str] = &["jobs", "jobs/status", "cronjobs", "cronjobs/status"];
const POLICY: &[&str] = &["poddisruptionbudgets", "poddisruptionbudgets/status"];
const NETWORKING: &[&str] = &["ingresses", "ingresses/status", "networkpolicies"];

fn view_rules() -> Vec<Value> {
    vec![
        rule(&[""], CORE_READABLE, READ),
        rule(&["apps"], APPS, READ),
        rule(&["batch"], BATCH, READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["policy"], POLICY, READ),
        rule(&["networking.k8s.io"], NETWORKING, READ),
        rule(&["coordination.k8s.io"], &["leases"], READ),
    ]
}

fn edit_rules() -> Vec<Value> {
    let core_writable = &[
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "pods",
        "secrets",
        "services",
        "serviceaccounts",
    ];
    vec![
        rule(&[""], CORE_READABLE, READ),
        rule(&[""], core_writable, WRITE),
        rule(
            &[""],
            &[
                "pods/exec",
                "pods/attach",
                "pods/portforward",
                "pods/eviction",
            ],
            &["create", "get"],
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&["apps"], APPS, WRITE),
        rule(&["batch"], BATCH, WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
        rule(&["policy"], POLICY, WRITE),
        rule(&["networking.k8s.io"], NETWORKING, WRITE),
        rule(&["coordination.k8s.io"], &["leases"], WRITE),
    ]
}

fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    rules.push(rule(&[GROUP], &["roles", "rolebindings"], WRITE));
    rules.push(rule(
        &["authorization.k8s.io"],
        &["localsubjectaccessreviews"],
        &["create"],
    ));
    rules
}

/// What a node agent (kubelet's role) needs: its Node and Lease, the pods bound to nodes and their
/// status, the configuration its pods mount, and events. Upstream narrows this per node with the
/// Node authorizer; r3s, like upstream, keeps the role but does not bind it to the group.
fn node_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &["nodes"],
            &[
                "create", "get", "list", "watch", "update", "patch", "delete",
            ],
        ),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(
            &[""],
            &["pods"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &["configmaps", "secrets", "services", "endpoints"],
            READ,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&[""], &["events"], &["create", "patch", "update"]),
        rule(&["coordination.k8s.io"], &["leases"], WRITE),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
    ]
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole",
           "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
           "rules": rules})
}

fn cluster_role_binding(name: &str, role: &str, group: &str) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRoleBinding",
           "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
           "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
           "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": group}]})
}

/// Creates the default roles and bindings that do not exist yet. Idempotent.
pub async fn ensure(store: &dyn Store) -> Result<(), ApiError> {
    let roles = [
        cluster_role(
            "cluster-admin",
            vec![
                rule(&["*"], &["*"], &["*"]),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
        ),
        cluster_role("admin", admin_rules()),
        cluster_role("edit", edit_rules()),
        cluster_role("view", view_rules()),
        cluster_role("system:node", node_rules()),
        cluster_role(
            "system:node-proxier",
            vec![
                rule(&[""], &["endpoints", "services", "nodes"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&[""], &["events"], &["create", "patch", "update"]),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
    ];
    let bindings = [
        cluster_role_binding("cluster-admin", "cluster-admin", "system:masters"),
        cluster_role_binding(
            "system:basic-user",
            "system:basic-user",
            "system:authenticated",
        ),
        cluster_role_binding("system:node-proxier", "system:node-proxier", "system:nodes"),
    ];
    for (plural, objects) in [
        ("clusterroles", &roles[..]),
        ("clusterrolebindings", &bindings[..]),
    ] {
        let res = registry::find(GROUP, "v1", plural)
            .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))?;
        for obj in objects {
            let mut obj = obj.clone();
            let key = res.key(None, object::name(&obj));
            if let Some(kv) = store
                .get(&key)
                .map_err(|e| ApiError::from_store(e, &res.name(), ""))?
            {
                if plural == "clusterroles" {
                    reconcile_rules(store, res, &kv, &obj).await?;
                }
                continue;
            }
            object::prepare_create(res, &mut obj)?;
            match store.create(&key, object::to_store(&obj)?).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(ApiError::from_store(e, &res.name(), object::name(&obj))),
            }
        }
    }
    remove_group_wide_node_binding(store).await
}

/// Adds the rules a newer r3s gives a default ClusterRole to the stored one, as upstream's
/// auto-reconciliation does: rules are only added, never removed, and a role annotated
/// `rbac.authorization.kubernetes.io/autoupdate: "false"` is left as the administrator made it.
async fn reconcile_rules(
    store: &dyn Store,
    res: &registry::Resource,
    kv: &crate::store::KeyValue,
    default: &Value,
) -> Result<(), ApiError> {
    let mut current = object::from_store(kv)?;
    if current["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"]
        == json!("false")
    {
        return Ok(());
    }
    let have = current["rules"].as_array().cloned().unwrap_or_default();
    let missing: Vec<Value> = default["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rule| !have.contains(rule))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut rules = have;
    rules.extend(missing);
    current["rules"] = Value::Array(rules);
    match store
        .update(&kv.key, object::to_store(&current)?, kv.mod_revision)
        .await
    {
        // A concurrent writer won: its version stands, the next start reconciles again.
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(ApiError::from_store(e, &res.name(), object::name(&current))),
    }
}

/// Deletes the `system:node` ClusterRoleBinding earlier versions bound to all of `system:nodes`,
/// if it is still exactly that default (an administrator's own binding is left alone).
async fn remove_group_wide_node_binding(store: &dyn Store) -> Result<(), ApiError> {
    let res = registry::find(GROUP, "v1", "clusterrolebindings")
        .ok_or_else(|| ApiError::Internal("clusterrolebindings are not registered".into()))?;
    let key = res.key(None, "system:node");
    let Some(kv) = store
        .get(&key)
        .map_err(|e| ApiError::from_store(e, &res.name(), "system:node"))?
    else {
        return Ok(());
    };
    let binding = object::from_store(&kv)?;
    let default = json!([{"apiGroup": GROUP, "kind": "Group", "name": "system:nodes"}]);
    if binding["metadata"]["labels"]["kubernetes.io/bootstrapping"] == "rbac-defaults"
        && binding["subjects"] == default
    {
        match store.delete(&key, Some(kv.mod_revision)).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(ApiError::from_store(e, &res.name(), "system:node")),
        }
    }
    Ok(())
}
