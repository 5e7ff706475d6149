//! A Deployment behind a Service, the fixture of the Endpoints and EndpointSlice tests: the
//! manifest (pods labelled `app: <name>`, a container port named `http` on 8080, the Service's
//! port 80 targeting it by name) and a stray pod the Service selects that no node runs and that
//! is reported Running but not Ready (pod IP 10.42.9.9), as a kubelet would.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// The Deployment (2 replicas) and the Service, both named `name` in `default`;
/// `service_labels` is empty or a flow mapping such as `{tier: front}`.
pub fn manifest(name: &str, service_labels: &str) -> String {
    let labels = if service_labels.is_empty() {
        String::new()
    } else {
        format!(", labels: {service_labels}")
    };
    let deployment = super::manifests::deployment(
        name,
        "default",
        2,
        &format!(
            "[{{name: {name}, image: registry.example/{name}:1, ports: [{{name: http, containerPort: 8080}}]}}]"
        ),
    );
    format!(
        r#"{deployment}---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default{labels}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

/// Creates the pod `stray` selected by the Service `name`, bound to a node nobody runs, and
/// reports it Running and not Ready.
pub async fn add_not_ready_pod(pods: &Api<Pod>, name: &str) {
    let stray: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"app": name}},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": name, "image": "x",
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &stray)
        .await
        .expect("create");
    let status = json!({"status": {"phase": "Running", "podIP": "10.42.9.9",
        "conditions": [{"type": "Ready", "status": "False"}]}});
    pods.patch_status("stray", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
}
