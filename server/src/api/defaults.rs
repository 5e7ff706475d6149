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
        ("", "Secret") => set_if_missing(obj, "type", json!("Opaque")),
        ("", "Service") => {
            if let Some(spec) = at(obj, &["spec"]) {
                service(spec);
            }
        }
        ("", "Pod") => {
            if let Some(spec) = at(obj, &["spec"]) {
                pod_spec(spec);
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
            if let Some(pod) = at(spec, &["template", "spec"]) {
                pod_spec(pod);
            }
        }
        _ => {}
    }
}

/// The object at `path` if every step exists and it is a JSON object (never creates anything).
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
