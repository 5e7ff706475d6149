//! Defaulting of the built-in kinds, applied to every create and update as the apiserver does, for
//! the fields people and controllers rely on: Secret `type`, Service `type`/ports, Deployment
//! replicas/strategy/limits, and pod templates (restart and DNS policy, scheduler, grace period,
//! container pull policy, termination message, port protocols). Per-kind code lives here only.

use serde_json::{Value, json};

use super::registry::Resource;

/// Fills in defaults on an object about to be stored (create or update of the main resource).
pub fn apply(res: &Resource, obj: &mut Value) {
    match (res.group, res.kind) {
        ("", "Namespace") if obj["spec"]["finalizers"].is_null() => {
            if let Some(map) = obj.as_object_mut() {
                let spec = map.entry("spec").or_insert_with(|| json!({}));
                set_if_missing(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        ("", "Secret") => {
            set_if_missing(obj, "type", json!("Opaque"));
            merge_string_data(obj);
        }
        ("", "LimitRange") => super::limitrange::default_items(obj),
        ("", "Service") => {
            if let Some(spec) = at(obj, &["spec"]) {
                service(spec);
            }
        }
        ("", "Pod") => {
            if let Some(spec) = at(obj, &["spec"]) {
                pod_spec(spec);
                default_toleration_seconds(spec);
            }
        }
        ("apps", "Deployment") => {
            let Some(spec) = at(obj, &["spec"]) else {
                return;
            };
            set_if_missing(spec, "replicas", json!(1));
            set_if_missing(spec, "revisionHistoryLimit", json!(10));
            set_if_missing(spec, "progressDeadlineSeconds", json!(600));
            set_if_missing(spec, "strategy", json!({}));
            if let Some(strategy) = at(spec, &["strategy"]) {
                set_if_missing(strategy, "type", json!("RollingUpdate"));
                if strategy["type"] == json!("RollingUpdate") {
                    set_if_missing(strategy, "rollingUpdate", json!({}));
                    if let Some(ru) = at(strategy, &["rollingUpdate"]) {
                        set_if_missing(ru, "maxUnavailable", json!("25%"));
                        set_if_missing(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            if let Some(pod) = at(spec, &["template", "spec"]) {
                pod_spec(pod);
            }
        }
        ("apps", "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            let Some(spec) = at(obj, &["spec"]) else {
                return;
            };
            if res.kind != "DaemonSet" {
                set_if_missing(spec, "replicas", json!(1));
            }
            set_strategy(res.kind, spec);
            if let Some(pod) = at(spec, &["template", "spec"]) {
                pod_spec(pod);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = at(obj, &["spec"]) {
                job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            let Some(spec) = at(obj, &["spec"]) else {
                return;
            };
            set_if_missing(spec, "concurrencyPolicy", json!("Allow"));
            set_if_missing(spec, "suspend", json!(false));
            set_if_missing(spec, "successfulJobsHistoryLimit", json!(3));
            set_if_missing(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(pod) = at(spec, &["jobTemplate", "spec", "template", "spec"]) {
                pod_spec(pod);
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut().filter(|p| p.is_object()) {
                    set_if_missing(port, "protocol", json!("TCP"));
                }
            }
        }
        _ => {}
    }
}

/// Upstream's DefaultTolerationSeconds admission: a pod that does not tolerate the not-ready or
/// unreachable NoExecute taint gets a 300 s toleration of it, so it leaves a dead node after five
/// minutes (the node lifecycle controller evicts it when the toleration runs out).
fn default_toleration_seconds(spec: &mut Value) {
    let Some(map) = spec.as_object_mut() else {
        return;
    };
    let list = map.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let has = list.iter().any(|t| {
            t["key"] == json!(key) && (t["effect"].is_null() || t["effect"] == json!("NoExecute"))
        });
        if !has {
            list.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300}),
            );
        }
    }
}

/// DaemonSet and StatefulSet update strategies and history limit (kubectl's `rollout status`
/// refuses a set without `updateStrategy.type`).
fn set_strategy(kind: &str, spec: &mut Value) {
    let strategy = match kind {
        "DaemonSet" => json!({"type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
        "StatefulSet" => {
            set_if_missing(spec, "podManagementPolicy", json!("OrderedReady"));
            set_if_missing(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        }
        _ => return,
    };
    set_if_missing(spec, "revisionHistoryLimit", json!(10));
    set_if_missing(spec, "updateStrategy", strategy);
}

/// Job defaults as upstream sets them: a Job with neither completions nor parallelism runs one
/// pod once; parallelism alone leaves completions unset (a work queue).
fn job_spec(spec: &mut Value) {
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        set_if_missing(spec, "completions", json!(1));
    }
    set_if_missing(spec, "parallelism", json!(1));
    set_if_missing(spec, "backoffLimit", json!(6));
    set_if_missing(spec, "completionMode", json!("NonIndexed"));
    set_if_missing(spec, "suspend", json!(false));
    set_if_missing(spec, "manualSelector", json!(false));
    set_if_missing(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if let Some(pod) = at(spec, &["template", "spec"]) {
        pod_spec(pod);
    }
}

/// The labels that tie a Job's pods to it, added to its template on create.
pub const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
const LEGACY_UID_LABEL: &str = "controller-uid";
const LEGACY_NAME_LABEL: &str = "job-name";

/// On create of a Job without `manualSelector`: the selector is generated from the Job's uid, and
/// the template gets the labels it selects (plus the job-name labels and their legacy forms).
pub fn job_selector_on_create(obj: &mut Value) {
    let uid = obj["metadata"]["uid"].clone();
    let name = obj["metadata"]["name"].clone();
    let Some(spec) = at(obj, &["spec"]) else {
        return;
    };
    if spec["manualSelector"] == json!(true) {
        return;
    }
    spec["selector"] = json!({"matchLabels": {JOB_UID_LABEL: uid.clone()}});
    let Some(template) = at(spec, &["template"]) else {
        return;
    };
    set_if_missing(template, "metadata", json!({}));
    let Some(meta) = at(template, &["metadata"]) else {
        return;
    };
    set_if_missing(meta, "labels", json!({}));
    if let Some(labels) = meta["labels"].as_object_mut() {
        labels.insert(JOB_UID_LABEL.into(), uid.clone());
        labels.insert(LEGACY_UID_LABEL.into(), uid);
        labels.insert(JOB_NAME_LABEL.into(), name.clone());
        labels.insert(LEGACY_NAME_LABEL.into(), name);
    }
}

/// The object at `path` if every step exists and it is a JSON object (never creates anything).
/// A Secret's `stringData` is write-only: as upstream, each entry replaces the same key of
/// `data` (base64-encoded) and the field itself is never stored or returned.
fn merge_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    if let Some(data) = data.as_object_mut() {
        for (key, value) in strings {
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
            data.insert(key, Value::String(encoded));
        }
    }
}

fn at<'a>(obj: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let target = path.iter().try_fold(obj, |v, key| v.get_mut(*key))?;
    target.is_object().then_some(target)
}

/// Sets `obj[key]` unless present; does nothing when `obj` is not an object.
fn set_if_missing(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        map.entry(key).or_insert(value);
    }
}

fn service(spec: &mut Value) {
    set_if_missing(spec, "type", json!("ClusterIP"));
    set_if_missing(spec, "sessionAffinity", json!("None"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter(|p| p.is_object()) {
            set_if_missing(port, "protocol", json!("TCP"));
            let number = port["port"].clone();
            set_if_missing(port, "targetPort", number);
        }
    }
}

fn pod_spec(spec: &mut Value) {
    set_if_missing(spec, "restartPolicy", json!("Always"));
    set_if_missing(spec, "dnsPolicy", json!("ClusterFirst"));
    set_if_missing(spec, "schedulerName", json!("default-scheduler"));
    set_if_missing(spec, "terminationGracePeriodSeconds", json!(30));
    set_if_missing(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(container);
        }
    }
}

fn container(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    let image = c["image"].as_str().unwrap_or("");
    // `:latest` (or no tag) is re-pulled, anything pinned only when missing.
    let last = image.rsplit('/').next().unwrap_or(image);
    let policy = if !last.contains(':') && !last.contains('@') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_if_missing(c, "imagePullPolicy", json!(policy));
    set_if_missing(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_if_missing(c, "terminationMessagePolicy", json!("File"));
    set_if_missing(c, "resources", json!({}));
    // A limit without a request requests the limit (upstream's pod defaulting).
    if let Some(limits) = c["resources"]["limits"].as_object().cloned()
        && let Some(resources) = c["resources"].as_object_mut()
    {
        let requests = resources.entry("requests").or_insert_with(|| json!({}));
        if let Some(requests) = requests.as_object_mut() {
            for (name, value) in limits {
                requests.entry(name).or_insert(value);
            }
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter(|p| p.is_object()) {
            set_if_missing(port, "protocol", json!("TCP"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::find;

    #[test]
    fn secret_string_data_lands_in_data() {
        let secrets = find("", "v1", "secrets").expect("secrets");
        let mut s =
            json!({"data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "u": "user"}});
        apply(secrets, &mut s);
        assert_eq!(
            s,
            json!({"type": "Opaque", "data": {"a": "bmV3", "keep": "eA==", "u": "dXNlcg=="}})
        );
    }

    #[test]
    fn deployment_and_service_defaults() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        let mut d = json!({"spec":{"template":{"spec":{"containers":[
            {"name":"a","image":"nginx"},{"name":"b","image":"reg:5000/x:1.2","ports":[{"containerPort":80}]}]}}}});
        apply(deploy, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["imagePullPolicy"], "Always");
        assert_eq!(containers[1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(containers[1]["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");

        let svc = find("", "v1", "services").expect("services");
        let mut s = json!({"spec":{"ports":[{"port":80}]}});
        apply(svc, &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port":80,"protocol":"TCP","targetPort":80})
        );
    }
}
