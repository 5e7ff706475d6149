//! End to end: the API served over HTTPS in-process (real rustls listener, real SQLite store in a
//! temporary directory, certificates and admin kubeconfig generated as on a first start), driven by
//! the real kubectl (`/usr/bin/kubectl`, v1.32) and by the `kube` crate.
//!
//! kubectl runs with its own `HOME` so its discovery cache starts empty. Without kubectl the
//! kubectl test prints `skipped:` (or fails when `CI=true`).

#[path = "support/kubectl_api.rs"]
mod kubectl_api;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kubectl_api::{ApiServer, KUBECTL, Options, have_kubectl, have_python_client, header};
use serde_json::{Value, json};

/// The API with ServiceAccount tokens.
async fn start() -> ApiServer {
    kubectl_api::start(Options {
        extra_sans: vec!["r3s-test-node".into()],
        tokens: true,
        ..Options::default()
    })
    .await
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

const CM_V1: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: e2e-cm
  labels: {app: e2e}
data:
  a: \"1\"
";

const DEPLOY_V1: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        env:
        - {name: A, value: \"1\"}
        - {name: B, value: \"2\"}
      - name: sidecar
        image: busybox
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_the_server() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;

    let version: Value =
        serde_json::from_str(&s.ok(&["version", "-o", "json"]).await).expect("version JSON");
    assert_eq!(version["serverVersion"]["minor"], "32");

    let resources = s.ok(&["api-resources"]).await;
    let deploy_line = resources
        .lines()
        .find(|l| l.starts_with("deployments "))
        .expect("deployments listed");
    assert!(
        deploy_line.contains("deploy") && deploy_line.contains("apps/v1"),
        "{deploy_line}"
    );
    assert!(resources.lines().any(|l| l.starts_with("leases ")));

    // apply: created, unchanged, configured (ConfigMap and Deployment).
    let cm = s.write("cm.yaml", CM_V1);
    assert_eq!(
        s.ok(&["apply", "-f", &cm]).await.trim(),
        "configmap/e2e-cm created"
    );
    assert_eq!(
        s.ok(&["apply", "-f", &cm]).await.trim(),
        "configmap/e2e-cm unchanged"
    );
    s.write("cm.yaml", &CM_V1.replace("a: \"1\"", "a: \"2\""));
    assert_eq!(
        s.ok(&["apply", "-f", &cm]).await.trim(),
        "configmap/e2e-cm configured"
    );
    let deploy = s.write("deploy.yaml", DEPLOY_V1);
    assert_eq!(
        s.ok(&["apply", "-f", &deploy]).await.trim(),
        "deployment.apps/web created"
    );
    assert_eq!(
        s.ok(&["apply", "-f", &deploy]).await.trim(),
        "deployment.apps/web unchanged"
    );
    // Drop the sidecar and env B, change the image: needs strategic merge patch semantics.
    let v2 = DEPLOY_V1
        .replace("nginx:1.25", "nginx:1.27")
        .replace("        - {name: B, value: \"2\"}\n", "")
        .replace("      - name: sidecar\n        image: busybox\n", "");
    s.write("deploy.yaml", &v2);
    assert_eq!(
        s.ok(&["apply", "-f", &deploy]).await.trim(),
        "deployment.apps/web configured"
    );

    // get: default columns, -o json, -o yaml, -l.
    let table = s.ok(&["get", "configmaps"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "DATA", "AGE"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("e2e-cm ") && l.split_whitespace().nth(1) == Some("1"))
    );
    let deploys = s.ok(&["get", "deploy"]).await;
    let header: Vec<&str> = deploys
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    let obj: Value =
        serde_json::from_str(&s.ok(&["get", "deploy", "web", "-o", "json"]).await).expect("json");
    let containers = &obj["spec"]["template"]["spec"]["containers"];
    // One container left, its env merged by name, plus the server's defaults.
    assert_eq!(containers.as_array().map(Vec::len), Some(1), "{containers}");
    assert_eq!(containers[0]["name"], "nginx");
    assert_eq!(containers[0]["image"], "nginx:1.27");
    assert_eq!(containers[0]["env"], json!([{"name":"A","value":"1"}]));
    assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(obj["metadata"]["generation"], 2);
    let yaml = s.ok(&["get", "configmap", "e2e-cm", "-o", "yaml"]).await;
    assert!(yaml.contains("a: \"2\""), "{yaml}");
    let labelled = s.ok(&["get", "cm", "-l", "app=e2e", "-o", "name"]).await;
    assert_eq!(labelled.trim(), "configmap/e2e-cm");
    let none = s
        .ok(&["get", "cm", "-l", "app=nothing", "-o", "name"])
        .await;
    assert_eq!(none.trim(), "");
    let all_ns = s.ok(&["get", "namespaces", "-o", "name"]).await;
    assert!(all_ns.contains("namespace/kube-system"), "{all_ns}");

    // A missing object and a stale update.
    let (ok, _, stderr) = s.kubectl(&["get", "configmap", "nothere"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("Error from server (NotFound): configmaps \"nothere\" not found"),
        "{stderr}"
    );
    let stale = s.write(
        "stale.yaml",
        &CM_V1.replace(
            "  name: e2e-cm\n",
            "  name: e2e-cm\n  resourceVersion: \"1\"\n",
        ),
    );
    let (ok, _, stderr) = s.kubectl(&["replace", "-f", &stale]).await;
    assert!(!ok);
    assert!(
        stderr.contains("Error from server (Conflict)")
            && stderr.contains("the object has been modified"),
        "{stderr}"
    );

    // An invalid manifest is refused with the field path.
    let bad = s.write(
        "bad.yaml",
        &DEPLOY_V1.replace("name: web\n", "name: bad\n").replace(
            "    metadata:\n      labels: {app: web}",
            "    metadata:\n      labels: {app: other}",
        ),
    );
    let (ok, _, stderr) = s.kubectl(&["apply", "-f", &bad]).await;
    assert!(!ok);
    assert!(
        stderr.contains(
            "The Deployment \"bad\" is invalid: spec.template.metadata.labels: Invalid value"
        ),
        "{stderr}"
    );

    // Everyday mutations: scale (needs the Scale subresource), label, annotate, patch (3 types).
    assert_eq!(
        s.ok(&["scale", "deployment", "web", "--replicas=5"])
            .await
            .trim(),
        "deployment.apps/web scaled"
    );
    let jsonpath = "jsonpath={.spec.replicas} {.metadata.generation}";
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", jsonpath]).await, "5 3");
    assert_eq!(
        s.ok(&["label", "cm", "e2e-cm", "tier=back"]).await.trim(),
        "configmap/e2e-cm labeled"
    );
    assert_eq!(
        s.ok(&["annotate", "cm", "e2e-cm", "note=hi"]).await.trim(),
        "configmap/e2e-cm annotated"
    );
    s.ok(&["patch", "cm", "e2e-cm", "-p", r#"{"data":{"b":"x"}}"#])
        .await;
    let merge = r#"{"data":{"c":"y"}}"#;
    s.ok(&["patch", "cm", "e2e-cm", "--type=merge", "-p", merge])
        .await;
    let remove = r#"[{"op":"remove","path":"/data/a"}]"#;
    s.ok(&["patch", "cm", "e2e-cm", "--type=json", "-p", remove])
        .await;
    let data = s
        .ok(&["get", "cm", "e2e-cm", "-o", "jsonpath={.data}"])
        .await;
    let data: Value = serde_json::from_str(&data).expect("data JSON");
    assert_eq!(data, json!({"b":"x","c":"y"}));
    let wide = s.ok(&["get", "cm", "-A", "--show-labels"]).await;
    assert!(
        wide.lines()
            .any(|l| l.starts_with("default ") && l.contains("e2e-cm") && l.contains("tier=back")),
        "{wide}"
    );
    let selector = "metadata.name=kube-public";
    let by_field = s
        .ok(&["get", "ns", "--field-selector", selector, "-o", "name"])
        .await;
    assert_eq!(by_field.trim(), "namespace/kube-public");
    assert!(s.ok(&["cluster-info"]).await.contains("is running at"));

    assert_eq!(
        s.ok(&["delete", "-f", &cm]).await.trim(),
        "configmap \"e2e-cm\" deleted"
    );
    assert_eq!(
        s.ok(&["delete", "deployment", "web"]).await.trim(),
        "deployment.apps \"web\" deleted"
    );
    let (ok, _, stderr) = s.kubectl(&["delete", "configmap", "e2e-cm"]).await;
    assert!(!ok && stderr.contains("(NotFound)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_sends_protobuf_bodies() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    assert_eq!(
        s.ok(&["create", "namespace", "pb"]).await.trim(),
        "namespace/pb created"
    );
    let create = |args: &'static [&'static str]| {
        let mut full = vec!["-n", "pb", "create"];
        full.extend_from_slice(args);
        full
    };
    for (args, want) in [
        (
            create(&["configmap", "cfg", "--from-literal=a=b"]),
            "configmap/cfg created",
        ),
        (
            create(&["secret", "generic", "sec", "--from-literal=pw=s3cr3t"]),
            "secret/sec created",
        ),
        (
            create(&["serviceaccount", "robot"]),
            "serviceaccount/robot created",
        ),
        (
            create(&[
                "deployment",
                "web",
                "--image=nginx:1.27",
                "--port=80",
                "--replicas=3",
            ]),
            "deployment.apps/web created",
        ),
        (
            create(&["service", "clusterip", "web", "--tcp=80:8080"]),
            "service/web created",
        ),
    ] {
        assert_eq!(s.ok(&args).await.trim(), want, "{args:?}");
    }
    let get = async |what: &str| s.json(&["-n", "pb", "get", what, "-o", "json"]).await;
    assert_eq!(get("configmap/cfg").await["data"], json!({"a": "b"}));
    // Secret data arrives as protobuf bytes and is served base64-encoded, as upstream.
    assert_eq!(get("secret/sec").await["data"], json!({"pw": "czNjcjN0"}));
    assert_eq!(get("secret/sec").await["type"], "Opaque");
    let deploy = get("deployment/web").await;
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(
        deploy["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(
        container["ports"],
        json!([{"containerPort": 80, "protocol": "TCP"}])
    );
    let svc = get("service/web").await;
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(get("namespace/pb").await["status"]["phase"], "Active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_whoami_and_denial_for_other_users() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    assert_eq!(
        s.ok(&["auth", "can-i", "create", "pods"]).await.trim(),
        "yes"
    );
    let whoami = s.ok(&["auth", "whoami", "-o", "json"]).await;
    let whoami: Value = serde_json::from_str(&whoami).expect("whoami JSON");
    assert_eq!(whoami["status"]["userInfo"]["username"], "system:admin");
    let list = s.ok(&["auth", "can-i", "--list"]).await;
    assert!(list.lines().any(|l| l.starts_with("*.*")), "{list}");

    // bob holds a certificate from the client CA but is no master: authenticated, then denied.
    let bob = s.user_kubeconfig("bob", &["dev"]);
    let as_bob = |args: &[&'static str]| -> Vec<String> {
        let mut full = vec!["--kubeconfig".to_string(), bob.clone()];
        full.extend(args.iter().map(|a| a.to_string()));
        full
    };
    let (ok, _, stderr) = s.kubectl(&refs(&as_bob(&["get", "configmaps"]))).await;
    assert!(!ok);
    assert!(
        stderr.contains(
            "Error from server (Forbidden): configmaps is forbidden: User \"bob\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
        ),
        "{stderr}"
    );
    let (ok, stdout, _) = s
        .kubectl(&refs(&as_bob(&["auth", "can-i", "create", "pods"])))
        .await;
    assert!(!ok, "can-i exits 1 for no");
    assert_eq!(stdout.trim(), "no");

    // RBAC: a RoleBinding (sent as protobuf by kubectl) to the default `view` ClusterRole.
    let created = s
        .ok(&[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
        ])
        .await;
    assert_eq!(
        created.trim(),
        "rolebinding.rbac.authorization.k8s.io/bob-view created"
    );
    let listed = s
        .ok(&refs(&as_bob(&["get", "configmaps", "-o", "name"])))
        .await;
    assert!(listed.trim().is_empty(), "no configmaps yet: {listed}");
    let yes = s
        .ok(&refs(&as_bob(&["auth", "can-i", "list", "configmaps"])))
        .await;
    assert_eq!(yes.trim(), "yes");
    let (ok, stdout, _) = s
        .kubectl(&refs(&as_bob(&["auth", "can-i", "create", "configmaps"])))
        .await;
    assert!(!ok && stdout.trim() == "no", "{stdout}");
    // `view` covers the batch, discovery and policy groups too, read-only.
    for what in [
        "jobs.batch",
        "cronjobs.batch",
        "endpointslices.discovery.k8s.io",
        "poddisruptionbudgets.policy",
    ] {
        let yes = s.ok(&refs(&as_bob(&["auth", "can-i", "list", what]))).await;
        assert_eq!(yes.trim(), "yes", "view lists {what}");
        let (ok, stdout, _) = s
            .kubectl(&refs(&as_bob(&["auth", "can-i", "delete", what])))
            .await;
        assert!(
            !ok && stdout.trim() == "no",
            "view cannot delete {what}: {stdout}"
        );
    }
    let (ok, _, stderr) = s
        .kubectl(&refs(&as_bob(&["get", "pods", "-n", "kube-system"])))
        .await;
    assert!(!ok && stderr.contains("(Forbidden)"), "{stderr}");
    let roles = s.ok(&["get", "clusterroles", "-o", "name"]).await;
    for role in ["cluster-admin", "admin", "edit", "view"] {
        assert!(
            roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role}\n")),
            "{roles}"
        );
    }
    let whoami = s
        .ok(&refs(&as_bob(&["auth", "whoami", "-o", "json"])))
        .await;
    let whoami: Value = serde_json::from_str(&whoami).expect("whoami JSON");
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        json!(["dev", "system:authenticated"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_and_bearer_authentication() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    s.ok(&["create", "serviceaccount", "robot"]).await;
    let token = s.ok(&["create", "token", "robot", "--duration=1h"]).await;
    let token = token.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    // A kubeconfig that trusts the CA and carries only the bearer token.
    let robot = s.token_kubeconfig("robot.yaml", &token);
    let whoami = s
        .ok(&[
            "--kubeconfig",
            &robot,
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .await;
    assert_eq!(whoami, "system:serviceaccount:default:robot");
    let (ok, _, stderr) = s.kubectl(&["--kubeconfig", &robot, "get", "pods"]).await;
    assert!(
        !ok && stderr.contains("User \"system:serviceaccount:default:robot\" cannot list"),
        "{stderr}"
    );

    // Deleting the ServiceAccount revokes its tokens.
    s.ok(&["delete", "serviceaccount", "robot"]).await;
    let (ok, _, stderr) = s.kubectl(&["--kubeconfig", &robot, "auth", "whoami"]).await;
    assert!(!ok && stderr.contains("Unauthorized"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_describe_edit_restart_and_watch() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    let deploy = s.write("deploy.yaml", DEPLOY_V1);
    s.ok(&["apply", "-f", &deploy]).await;
    let cm = s.write("cm.yaml", CM_V1);
    s.ok(&["apply", "-f", &cm]).await;

    let described = s.ok(&["describe", "deployment", "web"]).await;
    assert!(
        described.contains("Name:") && described.contains("web"),
        "{described}"
    );
    assert!(described.contains("nginx:1.25"), "{described}");
    let all = s.ok(&["get", "all"]).await;
    assert!(all.contains("deployment.apps/web"), "{all}");
    assert!(all.contains("service/kubernetes"), "{all}");

    assert_eq!(
        s.ok(&["rollout", "restart", "deployment/web"]).await.trim(),
        "deployment.apps/web restarted"
    );
    let restarted = s
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.metadata.annotations}",
        ])
        .await;
    assert!(
        restarted.contains("kubectl.kubernetes.io/restartedAt"),
        "{restarted}"
    );

    // `kubectl edit` with a scripted editor sends a strategic merge patch.
    let editor = s.write(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/a: \"1\"/a: \"edited\"/' \"$1\"\n",
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&editor, mode).expect("chmod editor");
    }
    let (code, stdout, stderr) = s
        .kubectl_env(
            &["edit", "configmap", "e2e-cm"],
            &[("KUBE_EDITOR", &editor)],
        )
        .await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert_eq!(stdout.trim(), "configmap/e2e-cm edited");
    let value = s
        .ok(&["get", "cm", "e2e-cm", "-o", "jsonpath={.data.a}"])
        .await;
    assert_eq!(value, "edited");

    // `kubectl get -w`: the listed rows, then a row per change, with the table columns.
    let mut watch = tokio::process::Command::new(KUBECTL)
        .args(["get", "configmaps", "-w"])
        .env("KUBECONFIG", &s.kubeconfig)
        .env("HOME", s.dir.path().join("home"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    let mut created = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("e2e-cm ") && !created {
            s.ok(&["create", "configmap", "late", "--from-literal=x=y"])
                .await;
            created = true;
        }
        let done = line.starts_with("late ");
        seen.push(line);
        if done {
            break;
        }
    }
    watch.kill().await.expect("stop kubectl get -w");
    assert_eq!(
        seen.first()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NAME", "DATA", "AGE"]),
        "{seen:?}"
    );
    let late = seen.last().expect("late row");
    assert_eq!(late.split_whitespace().nth(1), Some("1"), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("NAME")).count(),
        1,
        "one header: {seen:?}"
    );
}

/// Drives the server with the Python `kubernetes` client (PyPI): create, list by label, patch,
/// watch from a list's resourceVersion, delete.
const PYTHON_CLIENT: &str = r#"
import sys
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
listed = v1.list_namespaced_config_map("default")
rv = listed.metadata.resource_version
cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm", labels={"app": "py"}), data={"a": "1"})
created = v1.create_namespaced_config_map("default", cm)
assert created.metadata.uid, "uid"
v1.patch_namespaced_config_map("py-cm", "default", {"data": {"b": "2"}})
items = v1.list_namespaced_config_map("default", label_selector="app=py").items
assert [i.metadata.name for i in items] == ["py-cm"], items
assert items[0].data == {"a": "1", "b": "2"}, items[0].data
v1.delete_namespaced_config_map("py-cm", "default")
seen = []
w = watch.Watch()
for event in w.stream(v1.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
    seen.append((event["type"], event["object"].metadata.name))
    if event["type"] == "DELETED":
        w.stop()
assert seen == [("ADDED", "py-cm"), ("MODIFIED", "py-cm"), ("DELETED", "py-cm")], seen
try:
    v1.read_namespaced_config_map("py-cm", "default")
    raise SystemExit("still there")
except ApiException as e:
    assert e.status == 404, e.status

# Server-side apply: create, ownership, conflict (409) and force.
ssa = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py-ssa"}, "data": {"a": "1"}}
apply_type = "application/apply-patch+yaml"
applied = v1.patch_namespaced_config_map("py-ssa", "default", ssa, field_manager="py", _content_type=apply_type)
entry = applied.metadata.managed_fields[0]
assert (entry.manager, entry.operation) == ("py", "Apply"), applied.metadata.managed_fields
assert entry.fields_v1 == {"f:data": {"f:a": {}}}, entry.fields_v1
v1.patch_namespaced_config_map("py-ssa", "default", {"data": {"a": "2"}}, field_manager="other")
try:
    v1.patch_namespaced_config_map("py-ssa", "default", ssa, field_manager="py", _content_type=apply_type)
    raise SystemExit("apply did not conflict")
except ApiException as e:
    assert e.status == 409, e.status
    assert 'conflict with \\"other\\" using v1' in e.body, e.body
forced = v1.patch_namespaced_config_map("py-ssa", "default", ssa, field_manager="py", force=True, _content_type=apply_type)
assert forced.data == {"a": "1"}, forced.data
assert [m.manager for m in forced.metadata.managed_fields] == ["py"], forced.metadata.managed_fields
v1.delete_namespaced_config_map("py-ssa", "default")
print("python client ok")
"#;

/// The managed-fields entry of `manager` in `obj` (from `get -o json --show-managed-fields`).
fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    let deploy = s.write("ssa.yaml", DEPLOY_V1);
    let get = [
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ];

    // Create on apply; the manager owns exactly the applied fields.
    assert_eq!(
        s.ok(&["apply", "--server-side", "-f", &deploy])
            .await
            .trim(),
        "deployment.apps/web serverside-applied"
    );
    let live = s.json(&get).await;
    let mine = entry(&live, "kubectl").expect("kubectl's entry");
    assert_eq!(mine["operation"], "Apply");
    assert_eq!(mine["apiVersion"], "apps/v1");
    let containers = &mine["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
    assert_eq!(
        containers["k:{\"name\":\"nginx\"}"]["f:env"]["k:{\"name\":\"B\"}"],
        json!({".": {}, "f:name": {}, "f:value": {}})
    );
    assert_eq!(mine["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
    assert_eq!(live["metadata"]["generation"], 1);

    // Re-applying the same file changes nothing.
    let rv = live["metadata"]["resourceVersion"].clone();
    s.ok(&["apply", "--server-side", "-f", &deploy]).await;
    assert_eq!(s.json(&get).await["metadata"]["resourceVersion"], rv);

    // Another manager takes replicas with a patch; applying 2 again conflicts.
    s.ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"replicas":5}}"#])
        .await;
    let patched = s.json(&get).await;
    let theirs = entry(&patched, "kubectl-patch").expect("kubectl-patch's entry");
    assert_eq!(theirs["operation"], "Update");
    assert_eq!(theirs["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    assert!(
        entry(&patched, "kubectl").expect("kubectl")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none()
    );
    let (ok, _, stderr) = s.kubectl(&["apply", "--server-side", "-f", &deploy]).await;
    assert!(!ok, "the apply should conflict");
    assert!(
        stderr.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-patch\" using apps/v1"
        ) && stderr.contains(": .spec.replicas")
            && stderr.contains("--force-conflicts"),
        "{stderr}"
    );
    // A different manager applying the live value shares ownership without a conflict.
    let shared = s.write(
        "shared.yaml",
        &DEPLOY_V1.replace("replicas: 2", "replicas: 5"),
    );
    s.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &shared,
    ])
    .await;

    // --force-conflicts takes replicas back from both.
    s.ok(&["apply", "--server-side", "--force-conflicts", "-f", &deploy])
        .await;
    let forced = s.json(&get).await;
    assert_eq!(forced["spec"]["replicas"], 2);
    assert!(entry(&forced, "kubectl-patch").is_none(), "{forced}");
    assert!(
        entry(&forced, "other").expect("other")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none()
    );

    // Fields a manager stops applying are removed unless another manager owns them. `other`
    // stops applying env B (kubectl still does: it stays), then kubectl stops applying env B
    // (nobody owns it: it goes) and the sidecar (`other` still does: it stays).
    let without_b = DEPLOY_V1.replace("        - {name: B, value: \"2\"}\n", "");
    let shared = s.write("shared.yaml", &without_b);
    s.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &shared,
    ])
    .await;
    let env = s
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[*].name}",
        ])
        .await;
    assert_eq!(env, "A B");
    let v2 = without_b.replace("      - name: sidecar\n        image: busybox\n", "");
    s.write("ssa.yaml", &v2);
    s.ok(&["apply", "--server-side", "-f", &deploy]).await;
    let after = s.json(&get).await;
    let pod_spec = &after["spec"]["template"]["spec"];
    let names: Vec<&str> = pod_spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["nginx", "sidecar"], "{after}");
    assert_eq!(
        pod_spec["containers"][0]["env"],
        json!([{"name": "A", "value": "1"}])
    );
    // Once `other` stops applying the sidecar too, it goes.
    s.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &deploy,
    ])
    .await;
    let after = s.json(&get).await;
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .len(),
        1,
        "{after}"
    );
    assert_eq!(after["metadata"]["generation"], 5, "{after}");

    // Updates record their manager: create, label, client-side apply, scale.
    s.ok(&["create", "configmap", "ssa-cm", "--from-literal=a=1"])
        .await;
    s.ok(&["label", "configmap", "ssa-cm", "tier=web"]).await;
    let cm = s
        .json(&["get", "cm", "ssa-cm", "-o", "json", "--show-managed-fields"])
        .await;
    assert_eq!(
        entry(&cm, "kubectl-create").expect("create")["fieldsV1"],
        json!({"f:data": {".": {}, "f:a": {}}})
    );
    assert_eq!(
        entry(&cm, "kubectl-label").expect("label")["fieldsV1"],
        json!({"f:metadata": {"f:labels": {".": {}, "f:tier": {}}}})
    );
    let csa = s.write("csa.yaml", CM_V1);
    s.ok(&["apply", "-f", &csa]).await;
    let cm = s
        .json(&["get", "cm", "e2e-cm", "-o", "json", "--show-managed-fields"])
        .await;
    let csa_entry = entry(&cm, "kubectl-client-side-apply").expect("client-side apply");
    assert_eq!(csa_entry["operation"], "Update");
    assert!(
        csa_entry["fieldsV1"]["f:metadata"]["f:annotations"]
            .get("f:kubectl.kubernetes.io/last-applied-configuration")
            .is_some(),
        "{csa_entry}"
    );
    // kubectl hides managedFields unless asked.
    let plain = s.json(&["get", "cm", "e2e-cm", "-o", "json"]).await;
    assert!(plain["metadata"].get("managedFields").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_field_validation() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    let bad = DEPLOY_V1
        .replace("  replicas: 2\n", "  replicas: 2\n  foo: bar\n")
        .replace(
            "        image: nginx:1.25\n",
            "        image: nginx:1.25\n        colour: red\n",
        );
    let file = s.write("bad.yaml", &bad);
    // Strict (kubectl's default): refused with the paths, for client- and server-side apply.
    for args in [
        vec!["apply", "-f", &file],
        vec!["apply", "--server-side", "-f", &file],
        vec!["create", "-f", &file],
    ] {
        let (ok, _, stderr) = s.kubectl(&args).await;
        assert!(!ok, "{args:?} should fail");
        assert!(
            stderr.contains("Error from server (BadRequest)")
                && stderr.contains("strict decoding error: unknown field \"spec.foo\", unknown field \"spec.template.spec.containers[0].colour\""),
            "{args:?}: {stderr}"
        );
    }
    // Warn: created, with warnings printed.
    let (ok, stdout, stderr) = s.kubectl(&["apply", "--validate=warn", "-f", &file]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stderr.contains("Warning: unknown field \"spec.foo\""),
        "{stderr}"
    );
    // Ignore (--validate=false): accepted silently. Unknown fields are never stored.
    let stored = s.json(&["get", "deploy", "web", "-o", "json"]).await;
    assert!(stored["spec"].get("foo").is_none(), "{stored}");
    let (ok, stdout, stderr) = s
        .kubectl(&["replace", "--validate=false", "-f", &file])
        .await;
    assert!(ok, "{stdout}{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
    // A patch is checked too (kubectl patch sends no fieldValidation: the default warns).
    let (ok, _, stderr) = s
        .kubectl(&["patch", "deploy", "web", "-p", r#"{"spec":{"bogus":1}}"#])
        .await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Warning: unknown field \"spec.bogus\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kubernetes_client() {
    if !have_python_client() {
        return;
    }
    let s = start().await;
    let stdout = s.python("client.py", PYTHON_CLIENT).await;
    assert_eq!(stdout.trim(), "python client ok");
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_crd_and_custom_resource() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    let crd = s.write("crd.yaml", CRD);
    assert_eq!(
        s.ok(&["apply", "-f", &crd]).await.trim(),
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
    );
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ])
    .await;
    let widget = s.write(
        "widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n",
    );
    assert_eq!(
        s.ok(&["apply", "-f", &widget]).await.trim(),
        "widget.example.com/w1 created"
    );
    s.write(
        "widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 5\n",
    );
    assert_eq!(
        s.ok(&["apply", "-f", &widget]).await.trim(),
        "widget.example.com/w1 configured"
    );
    let crds = s.ok(&["get", "crd"]).await;
    assert_eq!(header(&crds), ["NAME", "CREATED", "AT"], "{crds}");
    assert!(crds.contains("widgets.example.com"), "{crds}");
    let listed = s.ok(&["get", "wd"]).await;
    assert!(listed.lines().any(|l| l.starts_with("w1 ")), "{listed}");
    let size = s
        .ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"])
        .await;
    assert_eq!(size, "5");
    s.ok(&["delete", "-f", &crd]).await;
    let (ok, _, stderr) = s.kubectl(&["get", "widgets.example.com", "w1"]).await;
    assert!(!ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_crate_list_watch_create_patch_delete() {
    let s = start().await;
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let list = cms.list(&ListParams::default()).await.expect("list");
    let rv = list
        .metadata
        .resource_version
        .clone()
        .expect("list resourceVersion");
    let mut events = cms
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .expect("watch")
        .boxed();

    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "kube-cm", "labels": {"app": "kube"}}, "data": {"x": "1"}
    }))
    .expect("configmap");
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());

    let patched = cms
        .patch(
            "kube-cm",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"y": "2"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        patched
            .data
            .as_ref()
            .and_then(|d| d.get("y"))
            .map(String::as_str),
        Some("2")
    );
    let strategic = cms
        .patch(
            "kube-cm",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"tier": "t"}}})),
        )
        .await
        .expect("strategic patch");
    assert_eq!(
        strategic
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tier"))
            .map(String::as_str),
        Some("t")
    );

    let selected = cms
        .list(&ListParams::default().labels("app=kube"))
        .await
        .expect("selected list");
    assert_eq!(selected.items.len(), 1);

    cms.delete("kube-cm", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(cms.get_opt("kube-cm").await.expect("get_opt").is_none());

    let mut seen = Vec::new();
    while seen.len() < 4 {
        match events.try_next().await.expect("watch event") {
            Some(WatchEvent::Added(o)) => seen.push(("ADDED", o.metadata.name)),
            Some(WatchEvent::Modified(o)) => seen.push(("MODIFIED", o.metadata.name)),
            Some(WatchEvent::Deleted(o)) => seen.push(("DELETED", o.metadata.name)),
            Some(WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Error(e)) => panic!("watch error: {e:?}"),
            None => break,
        }
    }
    let name = Some("kube-cm".to_string());
    assert_eq!(
        seen,
        [
            ("ADDED", name.clone()),
            ("MODIFIED", name.clone()),
            ("MODIFIED", name.clone()),
            ("DELETED", name)
        ]
    );

    let deploys: Api<Deployment> = Api::namespaced(client, "default");
    let err = deploys.get("missing").await.expect_err("404");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.message, "deployments.apps \"missing\" not found");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

const TYPED_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              mode: {type: string, enum: [fast, safe], default: safe}
    subresources:
      scale: {specReplicasPath: .spec.size, statusReplicasPath: .status.size}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Mode, type: string, jsonPath: .spec.mode}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
";

fn gadget(name: &str, spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: {name}\nspec: {spec}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_custom_resource_schema_prunes_defaults_and_validates() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    let crd = s.write("typed-crd.yaml", TYPED_CRD);
    s.ok(&["apply", "-f", &crd]).await;
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/gadgets.example.com",
        "--timeout=20s",
    ])
    .await;
    // Defaults fill what the manifest left out.
    let g1 = s.write("g1.yaml", &gadget("g1", "{size: 3}"));
    s.ok(&["apply", "-f", &g1]).await;
    let mode = s
        .ok(&["get", "gadget", "g1", "-o", "jsonpath={.spec.mode}"])
        .await;
    assert_eq!(mode, "safe");
    // The printer columns are the table kubectl shows.
    let listed = s.ok(&["get", "gadgets"]).await;
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "SIZE", "MODE", "AGE"], "{listed}");
    assert_eq!(lines[1][..3], ["g1", "3", "safe"], "{listed}");
    assert!(lines[1][3].ends_with('s'), "an age: {listed}");
    // The scale subresource maps to the CRD's replica path.
    assert_eq!(
        s.ok(&["scale", "gadget", "g1", "--replicas=4"])
            .await
            .trim(),
        "gadget.example.com/g1 scaled"
    );
    let size = s
        .ok(&["get", "gadget", "g1", "-o", "jsonpath={.spec.size}"])
        .await;
    assert_eq!(size, "4");
    // Wrong types, ranges and values: 422 with field paths, nothing stored.
    let g2 = s.write("g2.yaml", &gadget("g2", "{size: three}"));
    let (ok, _, stderr) = s.kubectl(&["apply", "-f", &g2]).await;
    assert!(!ok);
    assert!(
        stderr.contains(
            r#"spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#
        ),
        "{stderr}"
    );
    let g3 = s.write("g3.yaml", &gadget("g3", "{size: 0, mode: slow}"));
    let (ok, _, stderr) = s.kubectl(&["apply", "-f", &g3]).await;
    assert!(!ok);
    assert!(
        stderr.contains(
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        ),
        "{stderr}"
    );
    assert!(
        stderr
            .contains(r#"spec.mode: Unsupported value: "slow": supported values: "fast", "safe""#),
        "{stderr}"
    );
    let g4 = s.write("g4.yaml", &gadget("g4", "{mode: fast}"));
    let (ok, _, stderr) = s.kubectl(&["apply", "-f", &g4]).await;
    assert!(!ok);
    assert!(stderr.contains("spec.size: Required value"), "{stderr}");
    for name in ["g2", "g3", "g4"] {
        let (found, _, _) = s.kubectl(&["get", "gadget", name]).await;
        assert!(!found, "{name} must not be stored");
    }
    // Unknown fields: refused under kubectl's default strict validation, pruned without it.
    let g5 = s.write("g5.yaml", &gadget("g5", "{size: 1, bogus: 1}"));
    let (ok, _, stderr) = s.kubectl(&["apply", "-f", &g5]).await;
    assert!(!ok);
    assert!(
        stderr.contains(r#"strict decoding error: unknown field "spec.bogus""#),
        "{stderr}"
    );
    s.ok(&["apply", "--validate=false", "-f", &g5]).await;
    let spec = s
        .ok(&["get", "gadget", "g5", "-o", "jsonpath={.spec}"])
        .await;
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("spec json");
    assert_eq!(spec, serde_json::json!({"size": 1, "mode": "safe"}));
}

const NETWORKING: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: edge}
spec: {controller: example.com/edge}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: edge
  tls: [{hosts: [shop.example.com], secretName: shop-tls}]
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
  - http:
      paths:
      - {path: /api, pathType: Exact, backend: {service: {name: api, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{protocol: TCP, port: 5432}]
"#;

/// networking.k8s.io/v1, which Helm charts ship (Ingress, NetworkPolicy, IngressClass): applied,
/// listed with upstream's columns, validated with field paths, and in the default roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_networking_kinds() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    let file = s.write("net.yaml", NETWORKING);
    let out = s.ok(&["apply", "-f", &file]).await;
    for want in [
        "ingressclass.networking.k8s.io/edge created",
        "ingress.networking.k8s.io/web created",
        "networkpolicy.networking.k8s.io/db-from-web created",
    ] {
        assert!(out.contains(want), "{out}");
    }
    assert!(
        s.ok(&["apply", "-f", &file])
            .await
            .contains("ingress.networking.k8s.io/web unchanged")
    );

    let table = s.ok(&["get", "ingress"]).await;
    assert_eq!(
        header(&table),
        ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        ["web", "edge", "shop.example.com,*", "80,"],
        "{table}"
    );
    let table = s.ok(&["get", "netpol"]).await;
    assert_eq!(header(&table), ["NAME", "POD-SELECTOR", "AGE"]);
    assert!(table.contains("db-from-web   app=db"), "{table}");
    let table = s.ok(&["get", "ingressclass"]).await;
    assert_eq!(header(&table), ["NAME", "CONTROLLER", "PARAMETERS", "AGE"]);
    assert!(table.contains("example.com/edge"), "{table}");
    let stored = s.json(&["get", "ingress", "web", "-o", "json"]).await;
    assert_eq!(stored["metadata"]["generation"], 1);
    assert_eq!(
        stored["spec"]["rules"][1]["http"]["paths"][0]["backend"]["service"]["port"]["name"],
        "http"
    );

    // Invalid: upstream's 422 with the field path, nothing stored.
    let bad = s.write(
        "bad-ingress.yaml",
        &NETWORKING
            .split("---")
            .nth(1)
            .unwrap_or("")
            .replace("name: web, namespace", "name: bad, namespace")
            .replace("pathType: Exact, ", ""),
    );
    let err = s.fails(&["apply", "-f", &bad]).await;
    assert!(
        err.contains(
            "The Ingress \"bad\" is invalid: spec.rules[1].http.paths[0].pathType: Required value"
        ),
        "{err}"
    );
    let (ok, _, _) = s.kubectl(&["get", "ingress", "bad"]).await;
    assert!(!ok, "an invalid Ingress is not stored");

    // The default `edit` role covers them, as upstream's aggregated roles do.
    let edit = s.ok(&["get", "clusterrole", "edit", "-o", "json"]).await;
    assert!(
        edit.contains("networking.k8s.io") && edit.contains("networkpolicies"),
        "{edit}"
    );
    s.ok(&["delete", "-f", &file]).await;
    let (ok, _, _) = s.kubectl(&["get", "ingress", "web"]).await;
    assert!(!ok);
}

const TABLE_KINDS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: default}
stringData: {a: b}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa1, namespace: default}
---
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: default}
spec: {ports: [{port: 80}], selector: {app: x}}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: l1, namespace: default}
spec: {holderIdentity: someone}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: r1, namespace: default}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: rb1, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r1}
subjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: st1, namespace: default}
spec:
  replicas: 0
  serviceName: st1
  selector: {matchLabels: {app: st1}}
  template:
    metadata: {labels: {app: st1}}
    spec: {containers: [{name: c, image: busybox}]}
"#;

/// Upstream's table columns for more built-in kinds, as kubectl prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_tables_of_more_kinds() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    let file = s.write("kinds.yaml", TABLE_KINDS);
    s.ok(&["apply", "-f", &file]).await;
    for (what, want) in [
        ("secret/s1", vec!["NAME", "TYPE", "DATA", "AGE"]),
        ("serviceaccount/sa1", vec!["NAME", "SECRETS", "AGE"]),
        (
            "service/svc1",
            vec![
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ],
        ),
        ("namespace/default", vec!["NAME", "STATUS", "AGE"]),
        ("lease/l1", vec!["NAME", "HOLDER", "AGE"]),
        ("role/r1", vec!["NAME", "CREATED", "AT"]),
        ("rolebinding/rb1", vec!["NAME", "ROLE", "AGE"]),
        ("statefulset/st1", vec!["NAME", "READY", "AGE"]),
    ] {
        let table = s.ok(&["get", what]).await;
        assert_eq!(header(&table), want, "{what}:\n{table}");
    }
    let row = s.ok(&["get", "secret/s1", "--no-headers"]).await;
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["s1", "Opaque", "1"], "{row}");
    let row = s.ok(&["get", "rolebinding/rb1", "--no-headers"]).await;
    assert!(row.contains("Role/r1"), "{row}");
}
