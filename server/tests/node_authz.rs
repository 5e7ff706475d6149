//! The node authorizer through the real router and a real SQLite store: a node identity reads
//! only what pods bound to it reference, writes only its own objects, and is refused the rest
//! with upstream's wording.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use r3s_server::api::{ApiState, app, bootstrap, object, rbac_defaults, registry};
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use r3s_server::tls::PeerIdentity;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    state: ApiState,
}

fn admin() -> PeerIdentity {
    PeerIdentity {
        common_name: "system:admin".into(),
        organizations: vec!["system:masters".into()],
    }
}

fn node(name: &str) -> PeerIdentity {
    r3s_server::client::node_identity(name)
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(dir.path().join("state.db"), StoreOptions::default()).unwrap(),
        );
        bootstrap::ensure_namespaces(store.as_ref()).await.unwrap();
        rbac_defaults::ensure(store.as_ref()).await.unwrap();
        Fixture {
            _dir: dir,
            state: ApiState::new(store, "127.0.0.1:6443"),
        }
    }

    async fn call(
        &self,
        who: PeerIdentity,
        method: &str,
        uri: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let ctype = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, ctype)
            .body(if body.is_null() {
                Body::empty()
            } else {
                Body::from(body.to_string())
            })
            .unwrap();
        req.extensions_mut().insert(who);
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let code = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn create(&self, uri: &str, body: Value) {
        let (code, reply) = self.call(admin(), "POST", uri, body).await;
        assert_eq!(code, StatusCode::CREATED, "{uri}: {reply}");
    }
}

fn pod(name: &str, node: &str, configmap: &str, secret: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": node,
                    "volumes": [{"name": "c", "configMap": {"name": configmap}}],
                    "containers": [{"name": "c", "image": "busybox",
                                    "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}]}})
}

#[tokio::test]
async fn nodes_reach_only_what_their_pods_use_and_write_only_their_own_objects() {
    let f = Fixture::new().await;
    for (name, data) in [
        ("used", "configmaps"),
        ("other", "configmaps"),
        ("sec", "secrets"),
        ("othersec", "secrets"),
    ] {
        let kind = if data == "configmaps" {
            "ConfigMap"
        } else {
            "Secret"
        };
        f.create(
            &format!("/api/v1/namespaces/default/{data}"),
            json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}),
        )
        .await;
    }
    f.create(
        "/api/v1/namespaces/default/pods",
        pod("p1", "n1", "used", "sec"),
    )
    .await;
    f.create(
        "/api/v1/namespaces/default/pods",
        pod("p2", "n2", "other", "othersec"),
    )
    .await;
    for n in ["n1", "n2"] {
        f.create(
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}),
        )
        .await;
    }

    let n1 = || node("n1");
    let ok = |code: StatusCode, reply: &Value, what: &str| {
        assert!(code.is_success(), "{what}: {code} {reply}");
    };
    let forbidden = |code: StatusCode, reply: &Value, want: &str| {
        assert_eq!(code, StatusCode::FORBIDDEN, "{reply}");
        let msg = reply["message"].as_str().unwrap_or("");
        assert!(msg.contains(want), "{msg}");
    };

    // Reads: what its pods reference, nothing else.
    let (c, r) = f
        .call(
            n1(),
            "GET",
            "/api/v1/namespaces/default/configmaps/used",
            Value::Null,
        )
        .await;
    ok(c, &r, "configmap used by its pod");
    let (c, r) = f
        .call(
            n1(),
            "GET",
            "/api/v1/namespaces/default/secrets/sec",
            Value::Null,
        )
        .await;
    ok(c, &r, "secret used by its pod");
    let (c, r) = f
        .call(
            n1(),
            "GET",
            "/api/v1/namespaces/default/configmaps/other",
            Value::Null,
        )
        .await;
    forbidden(
        c,
        &r,
        "configmaps \"other\" is forbidden: User \"system:node:n1\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object",
    );
    let (c, r) = f
        .call(
            n1(),
            "GET",
            "/api/v1/namespaces/default/secrets/othersec",
            Value::Null,
        )
        .await;
    forbidden(c, &r, "no relationship found");
    let (c, r) = f.call(n1(), "GET", "/api/v1/secrets", Value::Null).await;
    forbidden(c, &r, "cannot list resource \"secrets\"");
    let (c, r) = f.call(n1(), "GET", "/api/v1/pods", Value::Null).await;
    ok(c, &r, "pods are readable");
    let (c, r) = f.call(n1(), "GET", "/api/v1/nodes", Value::Null).await;
    ok(c, &r, "nodes are readable");

    // Writes: its own Node and the status of its own pods.
    let label = json!({"metadata": {"labels": {"a": "b"}}});
    let (c, r) = f
        .call(n1(), "PATCH", "/api/v1/nodes/n1", label.clone())
        .await;
    ok(c, &r, "label own node");
    let (c, r) = f
        .call(n1(), "PATCH", "/api/v1/nodes/n2", label.clone())
        .await;
    forbidden(
        c,
        &r,
        "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\"",
    );
    let (c, r) = f
        .call(n1(), "PATCH", "/api/v1/nodes/n2/status", label)
        .await;
    forbidden(c, &r, "is not allowed to modify node \"n2\"");
    let status = json!({"status": {"phase": "Running"}});
    let (c, r) = f
        .call(
            n1(),
            "PATCH",
            "/api/v1/namespaces/default/pods/p1/status",
            status.clone(),
        )
        .await;
    ok(c, &r, "status of its own pod");
    let (c, r) = f
        .call(
            n1(),
            "PATCH",
            "/api/v1/namespaces/default/pods/p2/status",
            status,
        )
        .await;
    forbidden(c, &r, "no relationship found");
    let (c, r) = f
        .call(
            n1(),
            "DELETE",
            "/api/v1/namespaces/default/pods/p2",
            Value::Null,
        )
        .await;
    forbidden(c, &r, "cannot delete resource \"pods\"");

    // Its own Lease only.
    let lease = |n: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": n},
               "spec": {"holderIdentity": n}})
    };
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let (c, r) = f.call(n1(), "POST", leases, lease("n1")).await;
    ok(c, &r, "create own lease");
    f.create(leases, lease("n2")).await;
    let renew = json!({"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}});
    let (c, r) = f
        .call(n1(), "PATCH", &format!("{leases}/n1"), renew.clone())
        .await;
    ok(c, &r, "renew own lease");
    let (c, r) = f.call(n1(), "PATCH", &format!("{leases}/n2"), renew).await;
    forbidden(c, &r, "can only access node lease with the same name");

    // Events yes; anything else falls through to RBAC, which has nothing for nodes.
    let event = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"},
                       "involvedObject": {"kind": "Node", "name": "n1"}, "reason": "Test"});
    let (c, r) = f
        .call(n1(), "POST", "/api/v1/namespaces/default/events", event)
        .await;
    ok(c, &r, "create an event");
    let (c, r) = f
        .call(
            n1(),
            "POST",
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        )
        .await;
    forbidden(
        c,
        &r,
        "namespaces is forbidden: User \"system:node:n1\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope",
    );
}

#[tokio::test]
async fn the_old_group_wide_node_binding_is_removed_but_an_admins_is_kept() {
    let f = Fixture::new().await;
    let bindings = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";
    let binding = |labels: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "system:node", "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]})
    };
    // Written straight to the store, as earlier versions wrote their defaults (the API refuses
    // `:` in RBAC names; upstream allows it).
    put_binding(
        &f,
        binding(json!({"kubernetes.io/bootstrapping": "rbac-defaults"})),
    )
    .await;
    rbac_defaults::ensure(f.state.store.as_ref()).await.unwrap();
    let (code, _) = f
        .call(
            admin(),
            "GET",
            &format!("{bindings}/system:node"),
            Value::Null,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // Without the defaults label it is an administrator's decision: kept.
    put_binding(&f, binding(json!({}))).await;
    rbac_defaults::ensure(f.state.store.as_ref()).await.unwrap();
    let (code, _) = f
        .call(
            admin(),
            "GET",
            &format!("{bindings}/system:node"),
            Value::Null,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
}

async fn put_binding(f: &Fixture, mut obj: Value) {
    let res = registry::find("rbac.authorization.k8s.io", "v1", "clusterrolebindings").unwrap();
    object::prepare_create(res, &mut obj).unwrap();
    f.state
        .store
        .create(
            &res.key(None, "system:node"),
            object::to_store(&obj).unwrap(),
        )
        .await
        .unwrap();
}
