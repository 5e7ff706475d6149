//! End to end, with the real kubectl (`/usr/bin/kubectl`, v1.32) against the API over HTTPS on a
//! real SQLite store, with the control loops running in-process: TokenReview,
//! SubjectAccessReview and LocalSubjectAccessReview (answers, validation, who may create them),
//! ResourceQuota admission and the quota controller's `status.used`, LimitRange defaulting and
//! enforcement, and a Service's type change from LoadBalancer to ClusterIP.
//!
//! Without kubectl each test prints `skipped:` (or fails when `CI=true`).

#[path = "support/kubectl_api.rs"]
mod kubectl_api;

use kubectl_api::{ApiServer, Options, have_kubectl, have_python_client};
use r3s_server::controllers::ControllerOptions;
use serde_json::{Value, json};

/// The API with ServiceAccount tokens and the control loops.
async fn start() -> ApiServer {
    kubectl_api::start(Options {
        tokens: true,
        controllers: Some(ControllerOptions::default()),
        ..Options::default()
    })
    .await
}

fn sar(user: &str, groups: &[&str], verb: &str, resource: &str, namespace: &str) -> String {
    json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups,
                 "resourceAttributes": {"verb": verb, "resource": resource, "namespace": namespace}}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_token_and_subject_access_reviews() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;

    // Discovery lists the three kinds, create-only.
    let authz = s
        .ok(&[
            "api-resources",
            "--api-group=authorization.k8s.io",
            "-o",
            "wide",
        ])
        .await;
    for line in [
        "subjectaccessreviews",
        "localsubjectaccessreviews",
        "selfsubjectaccessreviews",
    ] {
        let row = authz
            .lines()
            .find(|l| l.starts_with(&format!("{line} ")))
            .unwrap_or_else(|| panic!("{line} missing:\n{authz}"));
        assert_eq!(row.split_whitespace().last(), Some("create"), "{row}");
    }
    let local = authz
        .lines()
        .find(|l| l.starts_with("localsubjectaccessreviews "))
        .expect("row");
    assert_eq!(
        local.split_whitespace().nth(2),
        Some("true"),
        "namespaced: {local}"
    );
    let authn = s
        .ok(&[
            "api-resources",
            "--api-group=authentication.k8s.io",
            "-o",
            "name",
        ])
        .await;
    assert!(
        authn
            .lines()
            .any(|l| l == "tokenreviews.authentication.k8s.io"),
        "{authn}"
    );

    // TokenReview of a ServiceAccount token, and of garbage.
    s.ok(&["create", "serviceaccount", "robot"]).await;
    let token = s.ok(&["create", "token", "robot"]).await.trim().to_string();
    let review = |token: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {"token": token}})
        .to_string()
    };
    let tr = s.write("tr.json", &review(&token));
    let answer = s.json(&["create", "-f", &tr, "-o", "json"]).await;
    let status = &answer["status"];
    assert_eq!(status["authenticated"], json!(true), "{answer}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    assert_eq!(
        status["user"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    let sa = s
        .json(&["get", "serviceaccount", "robot", "-o", "json"])
        .await;
    assert_eq!(status["user"]["uid"], sa["metadata"]["uid"]);
    let bad = s.write("bad.json", &review("not-a-token"));
    let answer = s.json(&["create", "-f", &bad, "-o", "json"]).await;
    assert!(answer["status"]["authenticated"].is_null(), "{answer}");
    assert!(answer["status"]["error"].is_string(), "{answer}");
    // A token for another audience does not authenticate to an API-audience review.
    let vault = s
        .ok(&["create", "token", "robot", "--audience=vault"])
        .await
        .trim()
        .to_string();
    let tr_vault = s.write("trv.json", &review(&vault));
    let answer = s.json(&["create", "-f", &tr_vault, "-o", "json"]).await;
    assert!(answer["status"]["authenticated"].is_null(), "{answer}");

    // SubjectAccessReview: bob is denied, then allowed through a RoleBinding, with the reason.
    let bob = s.write(
        "bob.json",
        &sar("bob", &["dev"], "list", "configmaps", "default"),
    );
    let answer = s.json(&["create", "-f", &bob, "-o", "json"]).await;
    assert_eq!(answer["status"], json!({"allowed": false}), "{answer}");
    s.ok(&[
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--user=bob",
    ])
    .await;
    let answer = s.json(&["create", "-f", &bob, "-o", "json"]).await;
    assert_eq!(answer["status"]["allowed"], json!(true), "{answer}");
    assert_eq!(
        answer["status"]["reason"],
        "RBAC: allowed by RoleBinding \"bob-view/default\" of ClusterRole \"view\" to User \"bob\""
    );
    let master = s.write(
        "master.json",
        &sar("alice", &["system:masters"], "delete", "nodes", ""),
    );
    let answer = s.json(&["create", "-f", &master, "-o", "json"]).await;
    assert_eq!(answer["status"]["allowed"], json!(true), "{answer}");

    // Invalid reviews: upstream's field errors.
    let empty = s.write(
        "empty.json",
        &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": "bob"}})
        .to_string(),
    );
    let stderr = s.fails(&["create", "-f", &empty]).await;
    assert!(
        stderr.contains("spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"),
        "{stderr}"
    );
    let nobody = s.write("nobody.json", &sar("", &[], "get", "pods", "default"));
    let stderr = s.fails(&["create", "-f", &nobody]).await;
    assert!(
        stderr.contains(
            "spec.user: Invalid value: \"\": at least one of user or group must be specified"
        ),
        "{stderr}"
    );

    // LocalSubjectAccessReview: namespaced; the attributes must name the URL's namespace.
    let local = |namespace: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
               "metadata": {"namespace": "default"},
               "spec": {"user": "bob", "resourceAttributes":
                        {"verb": "get", "resource": "configmaps", "namespace": namespace}}})
        .to_string()
    };
    let lsar = s.write("lsar.json", &local("default"));
    let answer = s.json(&["create", "-f", &lsar, "-o", "json"]).await;
    assert_eq!(answer["status"]["allowed"], json!(true), "{answer}");
    let lsar_other = s.write("lsar2.json", &local("kube-system"));
    let stderr = s.fails(&["create", "-f", &lsar_other]).await;
    assert!(
        stderr.contains(
            "spec.resourceAttributes.namespace: Invalid value: \"kube-system\": must match metadata.namespace"
        ),
        "{stderr}"
    );

    // Who may ask: a plain ServiceAccount may not; bound to system:auth-delegator it may.
    let robot = s.token_kubeconfig("robot.yaml", &token);
    let stderr = s
        .fails(&["--kubeconfig", &robot, "create", "-f", &bob])
        .await;
    assert!(
        stderr.contains("subjectaccessreviews.authorization.k8s.io is forbidden: User \"system:serviceaccount:default:robot\" cannot create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope"),
        "{stderr}"
    );
    let stderr = s
        .fails(&["--kubeconfig", &robot, "create", "-f", &tr])
        .await;
    assert!(stderr.contains("(Forbidden)"), "{stderr}");
    s.ok(&[
        "create",
        "clusterrolebinding",
        "robot-delegator",
        "--clusterrole=system:auth-delegator",
        "--serviceaccount=default:robot",
    ])
    .await;
    let answer = s
        .json(&["--kubeconfig", &robot, "create", "-f", &bob, "-o", "json"])
        .await;
    assert_eq!(answer["status"]["allowed"], json!(true), "{answer}");
    let answer = s
        .json(&["--kubeconfig", &robot, "create", "-f", &tr, "-o", "json"])
        .await;
    assert_eq!(answer["status"]["authenticated"], json!(true), "{answer}");
    // Local reviews come with `admin` in a namespace, not with `view`.
    let stderr = s
        .fails(&["--kubeconfig", &robot, "create", "-f", &lsar])
        .await;
    assert!(stderr.contains("(Forbidden)"), "{stderr}");
    s.ok(&[
        "create",
        "rolebinding",
        "robot-admin",
        "--clusterrole=admin",
        "--serviceaccount=default:robot",
    ])
    .await;
    let answer = s
        .json(&["--kubeconfig", &robot, "create", "-f", &lsar, "-o", "json"])
        .await;
    assert_eq!(answer["status"]["allowed"], json!(true), "{answer}");
    // `view` (bound to bob in `default`) covers the quota kinds and claims, read-only.
    for (verb, what, allowed) in [
        ("list", "resourcequotas", true),
        ("watch", "limitranges", true),
        ("get", "persistentvolumeclaims", true),
        ("create", "resourcequotas", false),
        ("delete", "limitranges", false),
    ] {
        let file = s.write(
            &format!("{verb}-{what}.json"),
            &sar("bob", &["dev"], verb, what, "default"),
        );
        let answer = s.json(&["create", "-f", &file, "-o", "json"]).await;
        assert_eq!(
            answer["status"]["allowed"],
            json!(allowed),
            "{verb} {what}: {answer}"
        );
    }
}

fn pod(name: &str, resources: Value) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_resource_quota_admission_and_usage() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    s.ok(&["create", "namespace", "q"]).await;
    let created = s
        .ok(&[
            "create",
            "quota",
            "compute",
            "-n",
            "q",
            "--hard=pods=3,requests.cpu=1,limits.memory=1Gi",
        ])
        .await;
    assert_eq!(created.trim(), "resourcequota/compute created");
    s.ok(&[
        "create",
        "quota",
        "objects",
        "-n",
        "q",
        "--hard=configmaps=2,count/deployments.apps=1",
    ])
    .await;
    // The controller fills status.hard and status.used.
    s.eventually(
        &["get", "quota", "compute", "-n", "q", "-o", "json"],
        |out| {
            let q: Value = serde_json::from_str(out).unwrap_or_default();
            q["status"]["used"] == json!({"pods": "0", "requests.cpu": "0", "limits.memory": "0"})
                && q["status"]["hard"]["pods"] == "3"
        },
    )
    .await;

    // A pod without the tracked request or limit is refused.
    let bare = s.write("bare.json", &pod("bare", json!({})));
    let stderr = s.fails(&["create", "-n", "q", "-f", &bare]).await;
    assert!(
        stderr.contains("Error from server (Forbidden): error when creating")
            && stderr.contains(
                "pods \"bare\" is forbidden: failed quota: compute: must specify limits.memory for: c; requests.cpu for: c"
            ),
        "{stderr}"
    );
    let sized = |name: &str, cpu: &str| {
        pod(
            name,
            json!({"requests": {"cpu": cpu}, "limits": {"memory": "256Mi"}}),
        )
    };
    let a = s.write("a.json", &sized("a", "600m"));
    s.ok(&["create", "-n", "q", "-f", &a]).await;
    let b = s.write("b.json", &sized("b", "600m"));
    let stderr = s.fails(&["create", "-n", "q", "-f", &b]).await;
    assert!(
        stderr.contains(
            "pods \"b\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"
        ),
        "{stderr}"
    );
    let b = s.write("b2.json", &sized("b", "400m"));
    s.ok(&["create", "-n", "q", "-f", &b]).await;

    // Object counts, including count/<resource>.<group>.
    s.ok(&["create", "configmap", "one", "-n", "q"]).await;
    s.ok(&["create", "configmap", "two", "-n", "q"]).await;
    let stderr = s.fails(&["create", "configmap", "three", "-n", "q"]).await;
    assert!(
        stderr.contains(
            "configmaps \"three\" is forbidden: exceeded quota: objects, requested: configmaps=1, used: configmaps=2, limited: configmaps=2"
        ),
        "{stderr}"
    );
    s.ok(&["create", "deployment", "web", "-n", "q", "--image=nginx"])
        .await;
    let stderr = s
        .fails(&["create", "deployment", "web2", "-n", "q", "--image=nginx"])
        .await;
    assert!(
        stderr.contains("exceeded quota: objects, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"),
        "{stderr}"
    );

    // status.used follows, and `kubectl describe quota` shows it.
    s.eventually(
        &["get", "quota", "compute", "-n", "q", "-o", "json"],
        |out| {
            let q: Value = serde_json::from_str(out).unwrap_or_default();
            q["status"]["used"]
                == json!({"pods": "2", "requests.cpu": "1", "limits.memory": "512Mi"})
        },
    )
    .await;
    let described = s.ok(&["describe", "quota", "objects", "-n", "q"]).await;
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["configmaps", "2", "2"]),
        "{described}"
    );

    // Deleting a pod frees its share: admission and status both see it.
    s.ok(&["delete", "pod", "a", "-n", "q", "--wait=false"])
        .await;
    s.eventually(
        &[
            "get",
            "quota",
            "compute",
            "-n",
            "q",
            "-o",
            "jsonpath={.status.used.requests\\.cpu}",
        ],
        |out| out == "400m",
    )
    .await;
    let c = s.write("c.json", &sized("c", "600m"));
    s.ok(&["create", "-n", "q", "-f", &c]).await;

    // A scoped quota (sent as protobuf with its scopes) tracks only the pods in its scope.
    s.ok(&["create", "namespace", "q2"]).await;
    s.ok(&[
        "create",
        "quota",
        "besteffort",
        "-n",
        "q2",
        "--hard=pods=1",
        "--scopes=BestEffort",
    ])
    .await;
    let scoped = s
        .json(&["get", "quota", "besteffort", "-n", "q2", "-o", "json"])
        .await;
    assert_eq!(scoped["spec"]["scopes"], json!(["BestEffort"]));
    s.ok(&["create", "-n", "q2", "-f", &bare]).await;
    let other = s.write("other.json", &pod("other", json!({})));
    let stderr = s.fails(&["create", "-n", "q2", "-f", &other]).await;
    assert!(
        stderr.contains(
            "exceeded quota: besteffort, requested: pods=1, used: pods=1, limited: pods=1"
        ),
        "{stderr}"
    );
    s.ok(&["create", "-n", "q2", "-f", &a]).await;
    s.eventually(
        &[
            "get",
            "quota",
            "besteffort",
            "-n",
            "q2",
            "-o",
            "jsonpath={.status.used.pods}",
        ],
        |out| out == "1",
    )
    .await;
}

const LIMITS: &str = "apiVersion: v1
kind: LimitRange
metadata:
  name: sizes
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 100m}
    max: {cpu: \"1\"}
    min: {memory: 32Mi}
    maxLimitRequestRatio: {cpu: \"10\"}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_limit_range_defaults_and_bounds() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    s.ok(&["create", "namespace", "l"]).await;
    let lr = s.write("lr.yaml", LIMITS);
    s.ok(&["apply", "-n", "l", "-f", &lr]).await;
    // The stored LimitRange is defaulted: defaultRequest.memory comes from default.
    let stored = s
        .json(&["get", "limits", "sizes", "-n", "l", "-o", "json"])
        .await;
    assert_eq!(
        stored["spec"]["limits"][0]["defaultRequest"],
        json!({"cpu": "100m", "memory": "128Mi"})
    );

    let bare = s.write("bare.json", &pod("bare", json!({})));
    s.ok(&["create", "-n", "l", "-f", &bare]).await;
    let got = s
        .json(&["get", "pod", "bare", "-n", "l", "-o", "json"])
        .await;
    assert_eq!(
        got["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "500m", "memory": "128Mi"},
               "requests": {"cpu": "100m", "memory": "128Mi"}})
    );
    // A container's own values win over the defaults.
    let own = s.write("own.json", &pod("own", json!({"limits": {"cpu": "800m"}})));
    s.ok(&["create", "-n", "l", "-f", &own]).await;
    let got = s
        .json(&["get", "pod", "own", "-n", "l", "-o", "json"])
        .await;
    assert_eq!(
        got["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "800m", "memory": "128Mi"},
               "requests": {"cpu": "800m", "memory": "128Mi"}})
    );

    let big = s.write("big.json", &pod("big", json!({"limits": {"cpu": "2"}})));
    let stderr = s.fails(&["create", "-n", "l", "-f", &big]).await;
    assert!(
        stderr.contains(
            "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
        ),
        "{stderr}"
    );
    let small = s.write(
        "small.json",
        &pod("small", json!({"limits": {"memory": "16Mi"}})),
    );
    let stderr = s.fails(&["create", "-n", "l", "-f", &small]).await;
    assert!(
        stderr.contains("pods \"small\" is forbidden: [minimum memory usage per Container is 32Mi, but request is 16Mi, minimum memory usage per Container is 32Mi, but limit is 16Mi]")
            || stderr.contains("pods \"small\" is forbidden: minimum memory usage per Container is 32Mi, but request is 16Mi"),
        "{stderr}"
    );
    let skewed = s.write(
        "skewed.json",
        &pod(
            "skewed",
            json!({"requests": {"cpu": "50m"}, "limits": {"cpu": "1"}}),
        ),
    );
    let stderr = s.fails(&["create", "-n", "l", "-f", &skewed]).await;
    assert!(
        stderr.contains("pods \"skewed\" is forbidden: cpu max limit to request ratio per Container is 10, but provided ratio is 20.000000"),
        "{stderr}"
    );
    // Other namespaces are untouched.
    s.ok(&["create", "-f", &big]).await;
    let got = s.json(&["get", "pod", "big", "-o", "json"]).await;
    assert_eq!(
        got["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "2"}, "requests": {"cpu": "2"}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_service_type_change_clears_node_ports() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    s.ok(&["create", "service", "loadbalancer", "edge", "--tcp=80:8080"])
        .await;
    let svc = s.json(&["get", "service", "edge", "-o", "json"]).await;
    assert!(svc["spec"]["ports"][0]["nodePort"].is_u64(), "{svc}");
    let patched = s
        .ok(&[
            "patch",
            "service",
            "edge",
            "--type=merge",
            "-p",
            r#"{"spec":{"type":"ClusterIP"}}"#,
        ])
        .await;
    assert_eq!(patched.trim(), "service/edge patched");
    let svc = s.json(&["get", "service", "edge", "-o", "json"]).await;
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(svc["spec"]["ports"][0]["nodePort"].is_null(), "{svc}");
    assert!(svc["spec"]["clusterIP"].is_string(), "{svc}");
    // Asking for a node port on a ClusterIP Service is still refused.
    let stderr = s
        .fails(&[
            "patch",
            "service",
            "edge",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/ports/0/nodePort","value":30555}]"#,
        ])
        .await;
    assert!(
        stderr.contains(
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
        ),
        "{stderr}"
    );
    // And back to NodePort: a port is allocated again.
    s.ok(&[
        "patch",
        "service",
        "edge",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ])
    .await;
    let svc = s.json(&["get", "service", "edge", "-o", "json"]).await;
    assert!(svc["spec"]["ports"][0]["nodePort"].is_u64(), "{svc}");
}

const PYTHON_REVIEWS: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
core.create_namespaced_service_account("default", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="py")))
token = core.create_namespaced_service_account_token("py", "default", client.AuthenticationV1TokenRequest(
    spec=client.V1TokenRequestSpec(audiences=[]))).status.token
review = client.AuthenticationV1Api().create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)))
assert review.status.authenticated, review
assert review.status.user.username == "system:serviceaccount:default:py", review
sar = client.AuthorizationV1Api().create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
    user="system:serviceaccount:default:py", groups=["system:serviceaccounts"],
    resource_attributes=client.V1ResourceAttributes(verb="list", resource="pods", namespace="default"))))
assert sar.status.allowed is False, sar

core.create_namespaced_resource_quota("default", client.V1ResourceQuota(metadata=client.V1ObjectMeta(name="two"),
    spec=client.V1ResourceQuotaSpec(hard={"secrets": "1"})))
core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="s1")))
try:
    core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="s2")))
    raise SystemExit("the second secret was admitted")
except ApiException as e:
    assert e.status == 403, e
    assert "exceeded quota: two, requested: secrets=1, used: secrets=1, limited: secrets=1" in e.body, e.body
print("python reviews ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reviews_and_quota() {
    if !have_python_client() {
        return;
    }
    let s = start().await;
    let stdout = s.python("reviews.py", PYTHON_REVIEWS).await;
    assert_eq!(stdout.trim(), "python reviews ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_quota_checks_what_an_update_adds() {
    if !have_kubectl() {
        return;
    }
    let s = start().await;
    s.ok(&[
        "create",
        "quota",
        "lbs",
        "--hard=services.loadbalancers=1,services.nodeports=1",
    ])
    .await;
    s.ok(&["create", "service", "clusterip", "one", "--tcp=80:80"])
        .await;
    s.ok(&["create", "service", "clusterip", "two", "--tcp=80:80"])
        .await;
    s.ok(&[
        "patch",
        "service",
        "one",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"LoadBalancer"}}"#,
    ])
    .await;
    let stderr = s
        .fails(&[
            "patch",
            "service",
            "two",
            "--type=merge",
            "-p",
            r#"{"spec":{"type":"LoadBalancer"}}"#,
        ])
        .await;
    assert!(
        stderr.contains("services \"two\" is forbidden: exceeded quota: lbs, requested: services.loadbalancers=1,services.nodeports=1, used: services.loadbalancers=1,services.nodeports=1, limited: services.loadbalancers=1,services.nodeports=1"),
        "{stderr}"
    );
    // Unrelated updates of a counted object pass.
    s.ok(&["label", "service", "one", "tier=edge"]).await;
}
