//! User impersonation end to end, with the real kubectl (`/usr/bin/kubectl`, v1.32) against the
//! API over HTTPS on a real SQLite store: `--as`, `--as-group`, `--as-uid`, `auth can-i --as` and
//! `auth whoami --as` run as the impersonated user; a caller without the `impersonate` verb gets
//! kube-apiserver's 403, and one allowed to impersonate only `alice` may do just that; headers
//! kubectl refuses to send (groups or extras without a user) are sent raw over HTTPS.
//!
//! Without kubectl the test prints `skipped:` (or fails when `CI=true`).

#[path = "support/kubectl_api.rs"]
mod kubectl_api;

use kubectl_api::{Options, have_kubectl, start};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_impersonates_only_when_allowed() {
    if !have_kubectl() {
        return;
    }
    let s = start(Options::default()).await;

    // The admin may impersonate anyone; alice has no rights at all.
    s.ok(&["get", "pods", "-n", "default"]).await;
    let stderr = s
        .fails(&["--as=alice", "get", "pods", "-n", "default"])
        .await;
    assert!(
        stderr.contains("Error from server (Forbidden): pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{stderr}"
    );
    let me = s
        .json(&["auth", "whoami", "--as=alice", "-o", "json"])
        .await;
    assert_eq!(
        me["status"]["userInfo"],
        json!({"username": "alice", "groups": ["system:authenticated"]}),
        "{me}"
    );
    let me = s
        .json(&[
            "auth",
            "whoami",
            "--as=alice",
            "--as-group=dev",
            "--as-uid=u-1",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(
        me["status"]["userInfo"],
        json!({"username": "alice", "uid": "u-1", "groups": ["dev", "system:authenticated"]}),
        "{me}"
    );

    // A Role in `default` lets alice read pods there, and nowhere else.
    s.ok(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        "default",
        "--verb=get,list",
        "--resource=pods",
    ])
    .await;
    s.ok(&[
        "create",
        "rolebinding",
        "alice-reads",
        "-n",
        "default",
        "--role=pod-reader",
        "--user=alice",
    ])
    .await;
    s.ok(&["--as=alice", "get", "pods", "-n", "default"]).await;
    let stderr = s
        .fails(&["--as=alice", "get", "pods", "-n", "kube-system"])
        .await;
    assert!(
        stderr.contains("User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"kube-system\""),
        "{stderr}"
    );
    assert_eq!(
        s.can_i(&[
            "auth",
            "can-i",
            "list",
            "pods",
            "--as=alice",
            "-n",
            "default"
        ])
        .await,
        "yes"
    );
    assert_eq!(
        s.can_i(&[
            "auth",
            "can-i",
            "list",
            "pods",
            "--as=alice",
            "-n",
            "kube-system"
        ])
        .await,
        "no"
    );
    assert_eq!(
        s.can_i(&["auth", "can-i", "list", "pods", "-n", "kube-system"])
            .await,
        "yes",
        "the admin itself"
    );

    // bob (a client certificate, no rights) may not impersonate...
    let bob = s.user_kubeconfig("bob", &["dev"]);
    let stderr = s
        .fails(&[
            "--kubeconfig",
            &bob,
            "--as=alice",
            "get",
            "pods",
            "-n",
            "default",
        ])
        .await;
    assert!(
        stderr.contains("Error from server (Forbidden): users \"alice\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{stderr}"
    );
    // ...until allowed to impersonate exactly the user alice.
    let role = s.write(
        "impersonate-alice.json",
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "impersonate-alice"},
            "rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"],
                       "resourceNames": ["alice"]}]
        })
        .to_string(),
    );
    s.ok(&["create", "-f", &role]).await;
    s.ok(&[
        "create",
        "clusterrolebinding",
        "bob-impersonates-alice",
        "--clusterrole=impersonate-alice",
        "--user=bob",
    ])
    .await;
    s.ok(&[
        "--kubeconfig",
        &bob,
        "--as=alice",
        "get",
        "pods",
        "-n",
        "default",
    ])
    .await;
    let stderr = s
        .fails(&["--kubeconfig", &bob, "--as=carol", "get", "pods"])
        .await;
    assert!(
        stderr.contains("users \"carol\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{stderr}"
    );
    let stderr = s
        .fails(&[
            "--kubeconfig",
            &bob,
            "--as=alice",
            "--as-group=system:masters",
            "get",
            "pods",
        ])
        .await;
    assert!(
        stderr.contains("groups \"system:masters\" is forbidden: User \"bob\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope"),
        "{stderr}"
    );
    let stderr = s
        .fails(&[
            "--kubeconfig",
            &bob,
            "--as=alice",
            "--as-uid=u-1",
            "get",
            "pods",
        ])
        .await;
    assert!(
        stderr.contains("uids.authentication.k8s.io \"u-1\" is forbidden: User \"bob\" cannot impersonate resource \"uids\" in API group \"authentication.k8s.io\" at the cluster scope"),
        "{stderr}"
    );

    // A ServiceAccount user gets the ServiceAccount groups (the account need not exist).
    s.ok(&[
        "create",
        "rolebinding",
        "sas-view",
        "-n",
        "default",
        "--clusterrole=view",
        "--group=system:serviceaccounts",
    ])
    .await;
    let sa1 = "--as=system:serviceaccount:default:sa1";
    s.ok(&[sa1, "get", "configmaps", "-n", "default"]).await;
    s.fails(&["--as=alice", "get", "configmaps", "-n", "default"])
        .await;
    let me = s.json(&["auth", "whoami", sa1, "-o", "json"]).await;
    assert_eq!(
        me["status"]["userInfo"],
        json!({"username": "system:serviceaccount:default:sa1",
               "groups": ["system:serviceaccounts", "system:serviceaccounts:default",
                          "system:authenticated"]}),
        "{me}"
    );
    let stderr = s
        .fails(&["--kubeconfig", &bob, sa1, "get", "pods", "-n", "default"])
        .await;
    assert!(
        stderr.contains("serviceaccounts \"sa1\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"default\""),
        "{stderr}"
    );

    // kubectl itself refuses groups without a user, so send that raw: upstream answers 500.
    let stderr = s.fails(&["--as-group=dev", "get", "pods"]).await;
    assert!(stderr.contains("without impersonating a user"), "{stderr}");
    let (code, status) = s
        .raw(
            "GET",
            "/api/v1/namespaces/default/pods",
            &[("Impersonate-Group", "dev")],
            None,
        )
        .await;
    assert_eq!(code, 500, "{status}");
    assert_eq!(status["reason"], "InternalError", "{status}");
    assert_eq!(
        status["message"],
        "Internal Server Error: \"/api/v1/namespaces/default/pods\": requested [{Group  dev    }] without impersonating a user"
    );
    // Extras: percent-decoded, lower-cased keys, every value checked and kept.
    let (code, review) = s
        .raw(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &[
                ("Impersonate-User", "alice"),
                ("Impersonate-Extra-Acme.com%2FProject", "p1"),
                ("Impersonate-Extra-Acme.com%2FProject", "p2"),
            ],
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
        )
        .await;
    assert_eq!(code, 201, "{review}");
    assert_eq!(
        review["status"]["userInfo"]["extra"],
        json!({"acme.com/project": ["p1", "p2"]}),
        "{review}"
    );
}
