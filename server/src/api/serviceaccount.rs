//! Upstream's ServiceAccount admission for pods, and the pod binding of TokenRequests.
//!
//! On pod create: `spec.serviceAccountName` defaults to the deprecated `spec.serviceAccount`, else
//! `default`; the named ServiceAccount must exist (a missing `default` is waited for briefly, as
//! upstream retries it, because the ServiceAccount controller creates it just after the namespace);
//! a pod without `imagePullSecrets` gets its ServiceAccount's; and unless `automountServiceAccountToken`
//! is false (on the pod, else on the ServiceAccount) the pod gets upstream's `kube-api-access-<5>`
//! projected volume (a bound token, `kube-root-ca.crt`'s `ca.crt`, the namespace) mounted read-only
//! at [`MOUNT_PATH`] in every container and init container not already mounting something there.
//! A ServiceAccount annotated `kubernetes.io/enforce-mountable-secrets: "true"` limits the pod's
//! secret volumes, secret env references and pull secrets to the secrets it lists (upstream's
//! wording). Mirror pods are never changed and may not reference ServiceAccounts or secrets. The volume is
//! only added when the server issues tokens (`ApiState::tokens`), since kubelets could not fill it
//! otherwise.
//!
//! TokenRequest: a `boundObjectRef` must name a Pod (v1) that exists and runs as that ServiceAccount
//! (uid checked when given); node identities must bind every token to a pod on their own node
//! (upstream's NodeRestriction). Invariant: the Pod named in a pod-bound token existed, with the
//! token's uid, when the token was issued.

use std::time::Duration;

use serde_json::{Value, json};

use super::auth::UserInfo;
use super::error::ApiError;
use super::registry::{self, Resource};
use super::tokens::{self, Bound, ObjectRef};
use super::{ApiState, object, rbac_node};
use crate::store::Store;

/// Where the token volume is mounted.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The name prefix of the injected volume.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ServiceAccount of pods that name none.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The ServiceAccount annotation that limits pods to the secrets the account lists.
const ENFORCE_MOUNTABLE: &str = "kubernetes.io/enforce-mountable-secrets";
/// The annotation marking mirror pods.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// How often a missing `default` ServiceAccount is looked up again, and how long apart (upstream
/// tries ten times 100-200 ms apart).
const DEFAULT_ATTEMPTS: u32 = 10;
const RETRY_INTERVAL: Duration = Duration::from_millis(150);

/// The admission step for pod creates (nothing for other kinds).
pub async fn admit(
    state: &ApiState,
    res: &Resource,
    namespace: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if (res.group, res.kind) != ("", "Pod") {
        return Ok(());
    }
    let namespace = namespace.unwrap_or("default");
    let name = object::name(obj).to_string();
    let forbidden =
        |why: String| ApiError::Forbidden(format!("pods \"{name}\" is forbidden: {why}"));
    if !obj["metadata"]["annotations"][MIRROR_ANNOTATION].is_null() {
        return check_mirror(obj).map_err(forbidden);
    }
    let spec = &mut obj["spec"];
    let account = match spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        Some(a) => a.to_string(),
        None => spec["serviceAccount"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_ACCOUNT)
            .to_string(),
    };
    spec["serviceAccountName"] = json!(account);
    // The deprecated alias always reads the same as the name (upstream's v1 conversion).
    spec["serviceAccount"] = json!(account);
    let Some(sa) = find_account(state.store.as_ref(), namespace, &account).await? else {
        return Err(forbidden(format!(
            "error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
        )));
    };
    if state.tokens.is_some() && automount(spec, &sa) {
        mount_token(spec, &super::object::random_suffix());
    }
    let has_pull_secrets = spec["imagePullSecrets"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if !has_pull_secrets
        && let Some(secrets) = sa["imagePullSecrets"].as_array().filter(|a| !a.is_empty())
    {
        let names: Vec<Value> = secrets
            .iter()
            .map(|s| json!({"name": s["name"].as_str().unwrap_or("")}))
            .collect();
        spec["imagePullSecrets"] = Value::Array(names);
    }
    let enforce = sa["metadata"]["annotations"][ENFORCE_MOUNTABLE]
        .as_str()
        .is_some_and(|v| matches!(v, "true" | "True" | "TRUE" | "1" | "t" | "T"));
    if enforce {
        limit_secret_references(&sa, &obj["spec"]).map_err(forbidden)?;
    }
    Ok(())
}

/// Upstream's mountable-secrets check: every secret volume, secret env reference and pull
/// secret of the pod must be one the ServiceAccount lists.
fn limit_secret_references(sa: &Value, spec: &Value) -> Result<(), String> {
    let account = sa["metadata"]["name"].as_str().unwrap_or("");
    let listed = |key: &str| -> Vec<&str> {
        sa[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .collect()
    };
    let (mountable, pullable) = (listed("secrets"), listed("imagePullSecrets"));
    let items = |v: &'_ Value| v.as_array().cloned().unwrap_or_default();
    for v in items(&spec["volumes"]) {
        if let Some(name) = v["secret"]["secretName"].as_str()
            && !mountable.contains(&name)
        {
            return Err(format!(
                "volume with secret.secretName=\"{name}\" is not allowed because service account {account} does not reference that secret"
            ));
        }
    }
    for (list, what) in [
        ("initContainers", "init container"),
        ("containers", "container"),
    ] {
        for c in items(&spec[list]) {
            for e in items(&c["env"]) {
                if let Some(name) = e["valueFrom"]["secretKeyRef"]["name"].as_str()
                    && !mountable.contains(&name)
                {
                    return Err(format!(
                        "{what} {} with envVar {} referencing secret.secretName=\"{name}\" is not allowed because service account {account} does not reference that secret",
                        c["name"].as_str().unwrap_or(""),
                        e["name"].as_str().unwrap_or("")
                    ));
                }
            }
        }
    }
    for (i, p) in items(&spec["imagePullSecrets"]).iter().enumerate() {
        let name = p["name"].as_str().unwrap_or("");
        if !pullable.contains(&name) {
            return Err(format!(
                "imagePullSecrets[{i}].name=\"{name}\" is not allowed because service account {account} does not reference that imagePullSecret"
            ));
        }
    }
    Ok(())
}

/// Mirror pods (static pods a kubelet reports) may reference neither ServiceAccounts nor secrets.
fn check_mirror(obj: &Value) -> Result<(), String> {
    let spec = &obj["spec"];
    if spec["serviceAccountName"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err("a mirror pod may not reference service accounts".into());
    }
    if rbac_node::references(obj)
        .iter()
        .any(|(kind, _)| *kind == "secrets")
    {
        return Err("a mirror pod may not reference secrets".into());
    }
    let projects_token = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["projected"]["sources"].as_array().into_iter().flatten())
        .any(|s| !s["serviceAccountToken"].is_null());
    if projects_token {
        return Err("a mirror pod may not use ServiceAccountToken volume projections".into());
    }
    Ok(())
}

/// The ServiceAccount, looking again for a while if it is `default` (which the controller creates
/// right after its namespace, so a pod created in a new namespace may arrive first).
async fn find_account(
    store: &dyn Store,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let accounts = registry::find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::Internal("serviceaccounts are not registered".into()))?;
    let attempts = if name == DEFAULT_ACCOUNT {
        DEFAULT_ATTEMPTS
    } else {
        1
    };
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
        let kv = store
            .get(&accounts.key(Some(namespace), name))
            .map_err(|e| ApiError::from_store(e, &accounts.name(), name))?;
        if let Some(kv) = kv {
            return Ok(Some(object::from_store(&kv)?));
        }
    }
    Ok(None)
}

/// The pod's `automountServiceAccountToken` if set, else the ServiceAccount's, else true.
fn automount(spec: &Value, sa: &Value) -> bool {
    spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true)
}

/// The projected volume source upstream injects, with its defaults spelled out (as a stored pod
/// shows them).
pub fn token_volume_source() -> Value {
    json!({
        "defaultMode": 0o644,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": tokens::WARN_ONLY_SECONDS, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    })
}

/// Adds the token mount to every (init) container lacking one at [`MOUNT_PATH`] and, if any got
/// it, the volume (reusing a `kube-api-access-*` volume the pod already has); `suffix` names a new
/// volume.
fn mount_token(spec: &mut Value, suffix: &str) {
    let existing = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(str::to_string);
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mount = json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter(|c| c.is_object()) {
            let has = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"].as_str() == Some(MOUNT_PATH));
            if has {
                continue;
            }
            needed = true;
            match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(mounts) => mounts.push(mount.clone()),
                None => c["volumeMounts"] = json!([mount.clone()]),
            }
        }
    }
    if needed && existing.is_none() {
        let v = json!({"name": volume, "projected": token_volume_source()});
        match spec.get_mut("volumes").and_then(Value::as_array_mut) {
            Some(volumes) => volumes.push(v),
            None => spec["volumes"] = json!([v]),
        }
    }
}

/// What a TokenRequest for ServiceAccount `account` binds its token to, from its
/// `spec.boundObjectRef` (null: nothing, unless `user` is a node, which must bind to a pod on
/// itself).
pub fn token_binding(
    store: &dyn Store,
    user: &UserInfo,
    namespace: &str,
    account: &str,
    reference: &Value,
) -> Result<Bound, ApiError> {
    let node_user = rbac_node::node_of(user);
    let forbidden = |why: &str| {
        ApiError::Forbidden(format!("serviceaccounts \"{account}\" is forbidden: {why}"))
    };
    if reference.is_null() {
        return match node_user {
            Some(_) => Err(forbidden("node requested token not bound to a pod")),
            None => Ok(Bound::default()),
        };
    }
    let kind = reference["kind"].as_str().unwrap_or("");
    let api_version = reference["apiVersion"].as_str().unwrap_or("");
    let name = reference["name"].as_str().unwrap_or("");
    let want_uid = reference["uid"].as_str().unwrap_or("");
    if kind != "Pod" || api_version != "v1" || name.is_empty() {
        if node_user.is_some() {
            return Err(forbidden("node requested token not bound to a pod"));
        }
        let group_kind = match api_version.split_once('/') {
            Some((group, version)) => format!("{group}/{version}, Kind={kind}"),
            None => format!("/{api_version}, Kind={kind}"),
        };
        return Err(ApiError::BadRequest(format!(
            "cannot bind token to object of type {group_kind}"
        )));
    }
    if node_user.is_some() && want_uid.is_empty() {
        return Err(forbidden(
            "node requested token with a pod binding without a uid",
        ));
    }
    let pods = registry::find("", "v1", "pods")
        .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
    let kv = store
        .get(&pods.key(Some(namespace), name))
        .map_err(|e| ApiError::from_store(e, &pods.name(), name))?
        .ok_or_else(|| ApiError::NotFound {
            resource: pods.name(),
            name: name.to_string(),
        })?;
    let pod = object::from_store(&kv)?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    if !want_uid.is_empty() && want_uid != uid {
        let why = format!(
            "the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
        );
        return Err(match node_user {
            Some(_) => forbidden(&why),
            None => ApiError::AlreadyBound(format!(
                "Operation cannot be fulfilled on Pod \"{name}\": {why}"
            )),
        });
    }
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if let Some(node) = node_user
        && node_name != node
    {
        return Err(forbidden(
            "node requested token bound to a pod scheduled on a different node",
        ));
    }
    if pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or(DEFAULT_ACCOUNT)
        != account
    {
        return Err(ApiError::BadRequest(format!(
            "cannot bind token for serviceaccount \"{account}\" to pod running with different serviceaccount name."
        )));
    }
    let node = if node_name.is_empty() {
        None
    } else {
        let nodes = registry::find("", "v1", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        store
            .get(&nodes.key(None, node_name))
            .map_err(|e| ApiError::from_store(e, &nodes.name(), node_name))?
            .map(|kv| object::from_store(&kv))
            .transpose()?
            .map(|n| ObjectRef {
                name: node_name.to_string(),
                uid: n["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            })
    };
    Ok(Bound {
        pod: Some(ObjectRef {
            name: name.to_string(),
            uid,
        }),
        node,
        warn_after: None,
    })
}

/// Upstream's safe transition for projected tokens: a pod-bound request for exactly
/// [`tokens::WARN_ONLY_SECONDS`] for the API's audiences gets a token valid for
/// [`tokens::EXTENDED_SECONDS`] that carries `warnafter` at the requested expiry. Returns the
/// lifetime to issue and the binding to sign.
pub fn extend_projected(mut bound: Bound, seconds: i64, audiences: &[String]) -> (i64, Bound) {
    let for_api = !audiences.is_empty()
        && audiences
            .iter()
            .all(|a| tokens::API_AUDIENCES.contains(&a.as_str()));
    if bound.pod.is_some() && seconds == tokens::WARN_ONLY_SECONDS && for_api {
        bound.warn_after = Some(chrono::Utc::now().timestamp() + seconds);
        return (tokens::EXTENDED_SECONDS, bound);
    }
    (seconds, bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
    }

    #[test]
    fn the_token_volume_is_upstreams() {
        let mut p = pod(json!({
            "initContainers": [{"name": "init", "image": "x"}],
            "containers": [
                {"name": "a", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "image": "x", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        mount_token(&mut p["spec"], "abcde");
        let spec = &p["spec"];
        let mount =
            json!({"name": "kube-api-access-abcde", "readOnly": true, "mountPath": MOUNT_PATH});
        assert_eq!(spec["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(spec["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(
            spec["containers"][1]["volumeMounts"],
            json!([{"name": "own", "mountPath": MOUNT_PATH}]),
            "a container mounting its own credentials keeps them"
        );
        assert_eq!(spec["volumes"][0]["name"], "data");
        assert_eq!(
            spec["volumes"][1],
            json!({"name": "kube-api-access-abcde", "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}})
        );
        // Admitting again (a pod copied from another) reuses the volume it has.
        mount_token(&mut p["spec"], "zzzzz");
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn no_volume_when_every_container_mounts_its_own() {
        let mut p = pod(json!({"containers": [
            {"name": "a", "image": "x", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}]}));
        mount_token(&mut p["spec"], "abcde");
        assert!(p["spec"]["volumes"].is_null());
    }

    #[test]
    fn automount_prefers_the_pod_then_the_account() {
        let sa_off = json!({"automountServiceAccountToken": false});
        let sa_unset = json!({});
        assert!(automount(&json!({}), &sa_unset));
        assert!(!automount(&json!({}), &sa_off));
        assert!(automount(
            &json!({"automountServiceAccountToken": true}),
            &sa_off
        ));
        assert!(!automount(
            &json!({"automountServiceAccountToken": false}),
            &sa_unset
        ));
    }

    #[test]
    fn mirror_pods_may_not_reference_accounts_or_secrets() {
        let mirror = |spec: Value| json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "x"}}, "spec": spec});
        assert!(check_mirror(&mirror(json!({"containers": []}))).is_ok());
        assert_eq!(
            check_mirror(&mirror(json!({"serviceAccountName": "robot"}))),
            Err("a mirror pod may not reference service accounts".into())
        );
        assert_eq!(
            check_mirror(&mirror(
                json!({"volumes": [{"name": "s", "secret": {"secretName": "k"}}]})
            )),
            Err("a mirror pod may not reference secrets".into())
        );
        assert!(
            check_mirror(&mirror(json!({"volumes": [{"name": "t", "projected": {
                "sources": [{"serviceAccountToken": {"path": "token"}}]}}]})))
            .is_err()
        );
    }

    #[test]
    fn mountable_secrets_are_enforced_with_upstreams_wording() {
        let sa = json!({"metadata": {"name": "robot"},
            "secrets": [{"name": "allowed"}], "imagePullSecrets": [{"name": "pull"}]});
        let ok = json!({"volumes": [{"name": "v", "secret": {"secretName": "allowed"}}],
            "containers": [{"name": "c", "env": [{"name": "E",
                "valueFrom": {"secretKeyRef": {"name": "allowed", "key": "k"}}}]}],
            "imagePullSecrets": [{"name": "pull"}]});
        assert_eq!(limit_secret_references(&sa, &ok), Ok(()));
        let volume = json!({"volumes": [{"name": "v", "secret": {"secretName": "other"}}]});
        assert_eq!(
            limit_secret_references(&sa, &volume),
            Err("volume with secret.secretName=\"other\" is not allowed because service account robot does not reference that secret".into())
        );
        let env = json!({"initContainers": [{"name": "i", "env": [{"name": "E",
            "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]}]});
        assert_eq!(
            limit_secret_references(&sa, &env),
            Err("init container i with envVar E referencing secret.secretName=\"other\" is not allowed because service account robot does not reference that secret".into())
        );
        let pull = json!({"imagePullSecrets": [{"name": "pull"}, {"name": "x"}]});
        assert_eq!(
            limit_secret_references(&sa, &pull),
            Err("imagePullSecrets[1].name=\"x\" is not allowed because service account robot does not reference that imagePullSecret".into())
        );
    }

    #[test]
    fn only_pod_bound_api_tokens_of_3607_seconds_are_extended() {
        let pod_bound = Bound {
            pod: Some(ObjectRef {
                name: "p".into(),
                uid: "u".into(),
            }),
            ..Bound::default()
        };
        let api = vec![tokens::ISSUER.to_string()];
        let (lifetime, bound) = extend_projected(pod_bound.clone(), 3607, &api);
        assert_eq!(lifetime, tokens::EXTENDED_SECONDS);
        assert!(bound.warn_after.is_some());
        assert_eq!(extend_projected(pod_bound.clone(), 3600, &api).0, 3600);
        assert_eq!(
            extend_projected(pod_bound, 3607, &["vault".to_string()]).0,
            3607
        );
        assert_eq!(extend_projected(Bound::default(), 3607, &api).0, 3607);
    }
}
