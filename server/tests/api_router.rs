//! The API router driven in-process with `oneshot` (no socket, no TLS), on a real SQLite store in
//! a temporary directory: discovery, OpenAPI, Status errors, authentication and authorization, and
//! the generic handlers (create/get/list/update/patch/delete/watch, selectors, paging, Tables).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use r3s_server::api::{ApiState, app, bootstrap};
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use r3s_server::tls::PeerIdentity;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    state: ApiState,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("state.db"), StoreOptions::default()).expect("store"),
    );
    bootstrap::ensure_namespaces(store.as_ref())
        .await
        .expect("namespaces");
    Fixture {
        _dir: dir,
        state: ApiState::new(store, "127.0.0.1:6443"),
    }
}

fn admin() -> PeerIdentity {
    PeerIdentity {
        common_name: "system:admin".into(),
        organizations: vec!["system:masters".into()],
    }
}

struct Reply {
    code: StatusCode,
    content_type: String,
    body: Value,
}

impl Fixture {
    async fn call(&self, who: Option<PeerIdentity>, req: Request<Body>) -> Reply {
        let mut req = req;
        if let Some(who) = who {
            req.extensions_mut().insert(who);
        }
        let resp = app(self.state.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let code = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply {
            code,
            content_type,
            body,
        }
    }

    async fn admin(&self, method: &str, uri: &str, ctype: &str, body: Value) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, ctype)
            .body(if body.is_null() {
                Body::empty()
            } else {
                Body::from(body.to_string())
            })
            .expect("request");
        self.call(Some(admin()), req).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.admin("GET", uri, "application/json", Value::Null)
            .await
    }
}

fn get_req(uri: &str, accept: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .header(header::ACCEPT, accept)
        .body(Body::empty())
        .expect("request")
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":name,"labels":labels},"data":{"k":"v"}})
}

#[tokio::test]
async fn public_endpoints_and_401_for_anonymous() {
    let f = fixture().await;
    let v = f.call(None, get_req("/version", "application/json")).await;
    assert_eq!(v.code, StatusCode::OK);
    assert_eq!(v.body["major"], "1");
    assert_eq!(v.body["minor"], "32");
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(
            f.call(None, get_req(path, "*/*")).await.code,
            StatusCode::OK,
            "{path}"
        );
    }
    for path in [
        "/api",
        "/apis",
        "/api/v1/namespaces",
        "/openapi/v3",
        "/nonsense",
    ] {
        let r = f.call(None, get_req(path, "application/json")).await;
        assert_eq!(r.code, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            r.body,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
    }
}

#[tokio::test]
async fn non_masters_are_forbidden_with_upstream_wording() {
    let f = fixture().await;
    let bob = PeerIdentity {
        common_name: "bob".into(),
        organizations: vec![],
    };
    let r = f
        .call(
            Some(bob),
            get_req(
                "/apis/apps/v1/namespaces/default/deployments/web",
                "application/json",
            ),
        )
        .await;
    assert_eq!(r.code, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(
        r.body["message"],
        "deployments.apps \"web\" is forbidden: User \"bob\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"default\""
    );
    assert_eq!(r.body["reason"], "Forbidden");
}

#[tokio::test]
async fn discovery_legacy_and_aggregated() {
    let f = fixture().await;
    let agg = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let r = f.call(Some(admin()), get_req("/apis", agg)).await;
    assert_eq!(
        r.content_type,
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let apps = &r.body["items"][0];
    assert_eq!(apps["metadata"]["name"], "apps");
    let deploy = &apps["versions"][0]["resources"][0];
    assert_eq!(deploy["resource"], "deployments");
    assert_eq!(deploy["shortNames"], json!(["deploy"]));
    assert_eq!(deploy["responseKind"]["kind"], "Deployment");

    let core = f.call(Some(admin()), get_req("/api", agg)).await;
    assert_eq!(core.body["items"][0]["versions"][0]["version"], "v1");

    let legacy = f
        .call(Some(admin()), get_req("/apis", "application/json"))
        .await;
    assert_eq!(legacy.content_type, "application/json");
    assert_eq!(legacy.body["kind"], "APIGroupList");
    let names: Vec<&str> = legacy.body["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "apps",
            "batch",
            "discovery.k8s.io",
            "networking.k8s.io",
            "policy",
            "scheduling.k8s.io",
            "coordination.k8s.io",
            "storage.k8s.io",
            "rbac.authorization.k8s.io",
            "apiextensions.k8s.io",
            "authorization.k8s.io",
            "authentication.k8s.io"
        ]
    );

    let v1 = f.get("/api/v1").await;
    assert_eq!(v1.body["kind"], "APIResourceList");
    let resources: Vec<&str> = v1.body["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for want in [
        "namespaces",
        "pods",
        "pods/status",
        "configmaps",
        "secrets",
        "services",
        "nodes",
        "events",
        "endpoints",
        "serviceaccounts",
    ] {
        assert!(resources.contains(&want), "{want} in {resources:?}");
    }
    assert_eq!(f.get("/apis/apps/v1").await.body["groupVersion"], "apps/v1");
    assert_eq!(
        f.get("/apis/apps").await.body["preferredVersion"]["version"],
        "v1"
    );
    assert_eq!(
        f.get("/apis/metrics.k8s.io/v1beta1").await.code,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn openapi_v3_carries_patch_gvk_and_field_validation() {
    let f = fixture().await;
    let index = f.get("/openapi/v3").await;
    let url = index.body["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("apps/v1 doc")
        .to_string();
    let doc = f.get(&url).await;
    let op = &doc.body["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        op["x-kubernetes-group-version-kind"],
        json!({"group":"apps","version":"v1","kind":"Deployment"})
    );
    assert_eq!(op["parameters"][0]["name"], "fieldValidation");
    let core = f.get("/openapi/v3/api/v1").await;
    assert!(core.body["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
}

#[tokio::test]
async fn create_get_update_conflict_delete() {
    let f = fixture().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let created = f
        .admin(
            "POST",
            base,
            "application/json",
            cm("c1", json!({"app":"a"})),
        )
        .await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    let meta = &created.body["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(
        meta["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let rv1 = meta["resourceVersion"].as_str().expect("rv").to_string();

    let again = f
        .admin("POST", base, "application/json", cm("c1", json!({})))
        .await;
    assert_eq!(again.code, StatusCode::CONFLICT);
    assert_eq!(again.body["reason"], "AlreadyExists");
    assert_eq!(again.body["message"], "configmaps \"c1\" already exists");

    let missing = f.get(&format!("{base}/nope")).await;
    assert_eq!(missing.code, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["message"], "configmaps \"nope\" not found");
    assert_eq!(
        missing.body["details"],
        json!({"name":"nope","group":"","kind":"configmaps"})
    );

    let mut update = created.body.clone();
    update["data"]["k"] = json!("v2");
    let updated = f
        .admin(
            "PUT",
            &format!("{base}/c1"),
            "application/json",
            update.clone(),
        )
        .await;
    assert_eq!(updated.code, StatusCode::OK, "{}", updated.body);
    assert_ne!(updated.body["metadata"]["resourceVersion"], json!(rv1));
    assert_eq!(
        updated.body["metadata"]["uid"],
        created.body["metadata"]["uid"]
    );

    let stale = f
        .admin(
            "PUT",
            &format!("{base}/c1"),
            "application/json",
            update.clone(),
        )
        .await;
    assert_eq!(stale.code, StatusCode::CONFLICT);
    assert_eq!(stale.body["reason"], "Conflict");
    assert_eq!(
        stale.body["message"],
        "Operation cannot be fulfilled on configmaps \"c1\": the object has been modified; please apply your changes to the latest version and try again"
    );

    update["metadata"]["resourceVersion"] = json!("");
    update["data"]["k"] = json!("v3");
    let unconditional = f
        .admin("PUT", &format!("{base}/c1"), "application/json", update)
        .await;
    assert_eq!(unconditional.code, StatusCode::OK);
    assert_eq!(unconditional.body["data"]["k"], "v3");

    let no_ns = f
        .admin(
            "POST",
            "/api/v1/namespaces/ghost/configmaps",
            "application/json",
            cm("x", json!({})),
        )
        .await;
    assert_eq!(no_ns.code, StatusCode::NOT_FOUND);
    assert_eq!(no_ns.body["message"], "namespaces \"ghost\" not found");

    let invalid = f
        .admin("POST", base, "application/json", cm("Bad_Name", json!({})))
        .await;
    assert_eq!(invalid.code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        invalid.body["details"]["causes"][0]["field"],
        "metadata.name"
    );

    let proto = f
        .admin(
            "POST",
            base,
            "application/vnd.kubernetes.protobuf",
            json!({}),
        )
        .await;
    assert_eq!(proto.code, StatusCode::BAD_REQUEST, "no k8s protobuf magic");
    let yaml = Request::builder()
        .method("POST")
        .uri(base)
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-yaml}\n",
        ))
        .expect("request");
    let yaml = f.call(Some(admin()), yaml).await;
    assert_eq!(yaml.code, StatusCode::CREATED, "{}", yaml.body);
    let odd = f.admin("POST", base, "text/csv", json!({})).await;
    assert_eq!(odd.code, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let deleted = f
        .admin(
            "DELETE",
            &format!("{base}/c1"),
            "application/json",
            json!({"propagationPolicy":"Background"}),
        )
        .await;
    assert_eq!(deleted.code, StatusCode::OK);
    assert_eq!(deleted.body["metadata"]["name"], "c1");
    assert_eq!(
        f.get(&format!("{base}/c1")).await.code,
        StatusCode::NOT_FOUND
    );
    let gone = f
        .admin(
            "DELETE",
            &format!("{base}/c1"),
            "application/json",
            Value::Null,
        )
        .await;
    assert_eq!(gone.code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn list_selectors_paging_and_tables() {
    let f = fixture().await;
    let base = "/api/v1/namespaces/default/configmaps";
    for (i, tier) in ["fe", "be", "fe", "db", "fe"].iter().enumerate() {
        let r = f
            .admin(
                "POST",
                base,
                "application/json",
                cm(&format!("c{i}"), json!({"tier": tier})),
            )
            .await;
        assert_eq!(r.code, StatusCode::CREATED);
    }
    let names = |r: &Reply| -> Vec<String> {
        r.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let all = f.get(base).await;
    assert_eq!(all.body["kind"], "ConfigMapList");
    assert_eq!(names(&all), ["c0", "c1", "c2", "c3", "c4"]);
    let fe = f.get(&format!("{base}?labelSelector=tier%3Dfe")).await;
    assert_eq!(names(&fe), ["c0", "c2", "c4"]);
    let set = f
        .get(&format!("{base}?labelSelector=tier%20in%20(be%2Cdb)"))
        .await;
    assert_eq!(names(&set), ["c1", "c3"]);
    let by_name = f
        .get(&format!("{base}?fieldSelector=metadata.name%3Dc3"))
        .await;
    assert_eq!(names(&by_name), ["c3"]);
    let bad_field = f
        .get(&format!("{base}?fieldSelector=spec.nodeName%3Dx"))
        .await;
    assert_eq!(bad_field.code, StatusCode::BAD_REQUEST);

    // Paging with a selector: two matching items per page, one snapshot throughout.
    let p1 = f
        .get(&format!("{base}?labelSelector=tier%3Dfe&limit=2"))
        .await;
    assert_eq!(names(&p1), ["c0", "c2"]);
    let token = p1.body["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    f.admin(
        "POST",
        base,
        "application/json",
        cm("c9", json!({"tier":"fe"})),
    )
    .await;
    let p2 = f
        .get(&format!(
            "{base}?labelSelector=tier%3Dfe&limit=2&continue={token}"
        ))
        .await;
    assert_eq!(
        names(&p2),
        ["c4"],
        "the page reads the first page's snapshot"
    );
    assert!(p2.body["metadata"].get("continue").is_none());
    assert_eq!(
        p1.body["metadata"]["resourceVersion"],
        p2.body["metadata"]["resourceVersion"]
    );

    let table = f
        .call(
            Some(admin()),
            get_req(
                base,
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        )
        .await;
    assert_eq!(
        table.content_type,
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    );
    assert_eq!(table.body["kind"], "Table");
    let cols: Vec<&str> = table.body["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols, ["Name", "Data", "Age"]);
    assert_eq!(table.body["rows"][0]["cells"][0], "c0");
    assert_eq!(table.body["rows"][0]["cells"][1], 1);
    assert_eq!(
        table.body["rows"][0]["object"]["kind"],
        "PartialObjectMetadata"
    );

    let all_ns = f.get("/api/v1/configmaps").await;
    assert_eq!(names(&all_ns).len(), 6);
    let namespaces = f.get("/api/v1/namespaces").await;
    assert_eq!(
        names(&namespaces),
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    assert_eq!(namespaces.body["items"][0]["status"]["phase"], "Active");
}

#[tokio::test]
async fn patches_generation_and_status_subresource() {
    let f = fixture().await;
    let base = "/apis/apps/v1/namespaces/default/deployments";
    let deploy = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
        "spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},"template":{
            "metadata":{"labels":{"app":"web"}},
            "spec":{"containers":[{"name":"a","image":"nginx","env":[{"name":"X","value":"1"}]},
                                  {"name":"b","image":"busybox"}]}}}});
    let created = f.admin("POST", base, "application/json", deploy).await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["metadata"]["generation"], 1);

    let smp = f
        .admin("PATCH", &format!("{base}/web"), "application/strategic-merge-patch+json",
            json!({"spec":{"template":{"spec":{"containers":[{"name":"a","image":"nginx:2"},{"$patch":"delete","name":"b"}]}}}}))
        .await;
    assert_eq!(smp.code, StatusCode::OK, "{}", smp.body);
    let containers = &smp.body["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(1), "{containers}");
    assert_eq!(containers[0]["image"], "nginx:2");
    assert_eq!(containers[0]["env"], json!([{"name":"X","value":"1"}]));
    // Defaults from the create survive the patch.
    assert_eq!(containers[0]["terminationMessagePolicy"], "File");
    assert_eq!(smp.body["metadata"]["generation"], 2);

    let label = f
        .admin(
            "PATCH",
            &format!("{base}/web"),
            "application/merge-patch+json",
            json!({"metadata":{"labels":{"team":"x"}}}),
        )
        .await;
    assert_eq!(label.body["metadata"]["labels"]["team"], "x");
    assert_eq!(
        label.body["metadata"]["generation"], 2,
        "metadata changes keep generation"
    );

    let jp = f
        .admin(
            "PATCH",
            &format!("{base}/web"),
            "application/json-patch+json",
            json!([{"op":"replace","path":"/spec/replicas","value":3}]),
        )
        .await;
    assert_eq!(jp.body["spec"]["replicas"], 3);
    assert_eq!(jp.body["metadata"]["generation"], 3);

    let bad_status = f
        .admin(
            "PATCH",
            &format!("{base}/web"),
            "application/merge-patch+json",
            json!({"status":{"replicas":7}}),
        )
        .await;
    assert!(
        bad_status.body.get("status").is_none(),
        "main resource ignores status"
    );
    let status = f
        .admin(
            "PATCH",
            &format!("{base}/web/status"),
            "application/merge-patch+json",
            json!({"status":{"replicas":7},"spec":{"replicas":100}}),
        )
        .await;
    assert_eq!(status.code, StatusCode::OK, "{}", status.body);
    assert_eq!(status.body["status"]["replicas"], 7);
    assert_eq!(status.body["spec"]["replicas"], 3);
    assert_eq!(status.body["metadata"]["generation"], 3);

    let stale = f
        .admin(
            "PATCH",
            &format!("{base}/web"),
            "application/merge-patch+json",
            json!({"metadata":{"resourceVersion":"1"},"spec":{"replicas":1}}),
        )
        .await;
    assert_eq!(stale.code, StatusCode::CONFLICT);
    let ssa = f
        .admin(
            "PATCH",
            &format!("{base}/web"),
            "application/apply-patch+yaml",
            json!({}),
        )
        .await;
    assert_eq!(
        ssa.code,
        StatusCode::BAD_REQUEST,
        "fieldManager is required"
    );
}

#[tokio::test]
async fn server_side_apply_status_and_errors() {
    let f = fixture().await;
    let base = "/apis/apps/v1/namespaces/default/deployments";
    let f = &f;
    let apply = |uri: String, body: Value| async move {
        f.admin("PATCH", &uri, "application/apply-patch+yaml", body)
            .await
    };
    let deploy = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"ssa"},
        "spec":{"replicas":1,"selector":{"matchLabels":{"app":"ssa"}},
                "template":{"metadata":{"labels":{"app":"ssa"}},"spec":{"containers":[{"name":"c","image":"i"}]}}},
        "status":{"replicas":9}});
    // Status in an apply to the main resource is ignored; the object is created (201).
    let created = apply(format!("{base}/ssa?fieldManager=me"), deploy.clone()).await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    assert!(created.body.get("status").is_none(), "{}", created.body);
    assert_eq!(
        created.body["metadata"]["managedFields"][0]["manager"],
        "me"
    );
    // Status is applied through /status, recorded with the subresource.
    let status = apply(
        format!("{base}/ssa/status?fieldManager=ctl"),
        json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"ssa"},"status":{"replicas":1}}),
    )
    .await;
    assert_eq!(status.code, StatusCode::OK, "{}", status.body);
    assert_eq!(status.body["status"]["replicas"], 1);
    let entries = status.body["metadata"]["managedFields"]
        .as_array()
        .expect("entries");
    let ctl = entries
        .iter()
        .find(|e| e["manager"] == "ctl")
        .expect("ctl entry");
    assert_eq!(ctl["subresource"], "status");
    assert_eq!(ctl["fieldsV1"], json!({"f:status":{"f:replicas":{}}}));
    // Wrong kind, mismatched name, missing namespace.
    let mut wrong = deploy.clone();
    wrong["kind"] = json!("ReplicaSet");
    assert_eq!(
        apply(format!("{base}/ssa?fieldManager=me"), wrong)
            .await
            .code,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        apply(format!("{base}/other?fieldManager=me"), deploy.clone())
            .await
            .code,
        StatusCode::BAD_REQUEST
    );
    let missing_ns = apply(
        "/apis/apps/v1/namespaces/nope/deployments/ssa?fieldManager=me".into(),
        deploy.clone(),
    )
    .await;
    assert_eq!(
        missing_ns.code,
        StatusCode::NOT_FOUND,
        "{}",
        missing_ns.body
    );
    // A conflict names the field and manager in the causes.
    f.admin(
        "PATCH",
        &format!("{base}/ssa?fieldManager=scaler"),
        "application/merge-patch+json",
        json!({"spec":{"replicas":4}}),
    )
    .await;
    let conflict = apply(format!("{base}/ssa?fieldManager=me"), deploy.clone()).await;
    assert_eq!(conflict.code, StatusCode::CONFLICT);
    assert_eq!(
        conflict.body["details"]["causes"][0],
        json!({"reason":"FieldManagerConflict","field":".spec.replicas",
               "message": conflict.body["details"]["causes"][0]["message"].clone()})
    );
    assert!(
        conflict.body["details"]["causes"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("conflict with \"scaler\" using apps/v1 at ")),
        "{}",
        conflict.body
    );
    // force is only for apply patches.
    let forced_merge = f
        .admin(
            "PATCH",
            &format!("{base}/ssa?force=true"),
            "application/merge-patch+json",
            json!({}),
        )
        .await;
    assert_eq!(forced_merge.code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let f = fixture().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let mut obj = cm("held", json!({}));
    obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
    f.admin("POST", base, "application/json", obj).await;
    let deleting = f
        .admin(
            "DELETE",
            &format!("{base}/held"),
            "application/json",
            Value::Null,
        )
        .await;
    assert_eq!(deleting.code, StatusCode::OK);
    assert!(deleting.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(f.get(&format!("{base}/held")).await.code, StatusCode::OK);
    let released = f
        .admin(
            "PATCH",
            &format!("{base}/held"),
            "application/merge-patch+json",
            json!({"metadata":{"finalizers":null}}),
        )
        .await;
    assert_eq!(released.code, StatusCode::OK, "{}", released.body);
    assert_eq!(
        f.get(&format!("{base}/held")).await.code,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn watch_streams_initial_and_live_events_then_times_out() {
    let f = fixture().await;
    let base = "/api/v1/namespaces/default/configmaps";
    f.admin(
        "POST",
        base,
        "application/json",
        cm("w0", json!({"app":"w"})),
    )
    .await;
    let mut req = get_req(
        &format!("{base}?watch=1&labelSelector=app%3Dw&timeoutSeconds=5&allowWatchBookmarks=true"),
        "application/json",
    );
    req.extensions_mut().insert(admin());
    let resp = app(f.state.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    let mut next_event = async || -> Option<Value> {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("event JSON"));
            }
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    };
    events.push(next_event().await.expect("initial ADDED"));
    f.admin(
        "POST",
        base,
        "application/json",
        cm("w1", json!({"app":"w"})),
    )
    .await;
    f.admin(
        "POST",
        base,
        "application/json",
        cm("other", json!({"app":"x"})),
    )
    .await;
    f.admin(
        "DELETE",
        &format!("{base}/w0"),
        "application/json",
        Value::Null,
    )
    .await;
    events.push(next_event().await.expect("ADDED w1"));
    events.push(next_event().await.expect("DELETED w0"));
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("ADDED".into(), "w0".into()),
            ("ADDED".into(), "w1".into()),
            ("DELETED".into(), "w0".into())
        ]
    );
    // The stream ends by itself once timeoutSeconds has passed.
    while next_event().await.is_some() {}
}

#[tokio::test]
async fn namespace_terminates_until_finalized() {
    let f = fixture().await;
    let ns = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"doomed"}});
    let created = f
        .admin("POST", "/api/v1/namespaces", "application/json", ns)
        .await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(created.body["status"]["phase"], "Active");

    let deleting = f
        .admin("DELETE", "/api/v1/namespaces/doomed", "", Value::Null)
        .await;
    assert_eq!(deleting.code, StatusCode::OK);
    assert_eq!(deleting.body["status"]["phase"], "Terminating");
    let refused = f
        .admin(
            "POST",
            "/api/v1/namespaces/doomed/configmaps",
            "application/json",
            cm("x", json!({})),
        )
        .await;
    assert_eq!(refused.code, StatusCode::FORBIDDEN);
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(
                "unable to create new content in namespace doomed because it is being terminated"
            )),
        "{}",
        refused.body
    );
    let wrong_verb = f
        .admin("GET", "/api/v1/namespaces/doomed/finalize", "", Value::Null)
        .await;
    assert_eq!(wrong_verb.code, StatusCode::METHOD_NOT_ALLOWED);

    let mut finalize = deleting.body.clone();
    finalize["spec"]["finalizers"] = json!([]);
    finalize["metadata"]["labels"] = json!({"ignored": "by finalize"});
    let done = f
        .admin(
            "PUT",
            "/api/v1/namespaces/doomed/finalize",
            "application/json",
            finalize,
        )
        .await;
    assert_eq!(done.code, StatusCode::OK, "{}", done.body);
    assert!(done.body["metadata"].get("labels").is_none());
    assert_eq!(
        f.get("/api/v1/namespaces/doomed").await.code,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn pod_binding_eviction_and_streaming_subresources() {
    let f = fixture().await;
    let base = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p1"},
                     "spec":{"containers":[{"name":"c","image":"busybox"}]}});
    let created = f.admin("POST", base, "application/json", pod).await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["spec"]["restartPolicy"], "Always", "defaulted");

    let binding = json!({"apiVersion":"v1","kind":"Binding","metadata":{"name":"p1"},
                         "target":{"apiVersion":"v1","kind":"Node","name":"node-a"}});
    let bound = f
        .admin(
            "POST",
            &format!("{base}/p1/binding"),
            "application/json",
            binding.clone(),
        )
        .await;
    assert_eq!(bound.code, StatusCode::CREATED, "{}", bound.body);
    assert_eq!(bound.body["status"], "Success");
    let pod = f.get(&format!("{base}/p1")).await;
    assert_eq!(pod.body["spec"]["nodeName"], "node-a");
    assert_eq!(pod.body["status"]["conditions"][0]["type"], "PodScheduled");
    let on_node = f
        .get("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a")
        .await;
    assert_eq!(on_node.body["items"][0]["metadata"]["name"], "p1");
    let rebound = f
        .admin(
            "POST",
            &format!("{base}/p1/binding"),
            "application/json",
            binding,
        )
        .await;
    assert_eq!(rebound.code, StatusCode::CONFLICT);
    assert_eq!(
        rebound.body["message"],
        "pod p1 is already assigned to node \"node-a\""
    );

    let logs = f.get(&format!("{base}/p1/log?container=c")).await;
    assert_eq!(logs.code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(logs.body["reason"], "ServiceUnavailable");
    let exec = f
        .admin(
            "POST",
            &format!("{base}/p1/exec?command=ls"),
            "",
            Value::Null,
        )
        .await;
    assert_eq!(exec.code, StatusCode::SERVICE_UNAVAILABLE);

    let eviction = json!({"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p1"},
                          "deleteOptions":{"gracePeriodSeconds":0}});
    let evicted = f
        .admin(
            "POST",
            &format!("{base}/p1/eviction"),
            "application/json",
            eviction,
        )
        .await;
    assert_eq!(evicted.code, StatusCode::CREATED, "{}", evicted.body);
    assert_eq!(
        f.get(&format!("{base}/p1")).await.code,
        StatusCode::NOT_FOUND
    );

    let v1 = f.get("/api/v1").await;
    let eviction = v1.body["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "pods/eviction")
        .cloned()
        .expect("pods/eviction advertised");
    assert_eq!(eviction["group"], "policy");
    assert_eq!(eviction["verbs"], json!(["create"]));
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let f = fixture().await;
    r3s_server::api::services::ensure_kubernetes_service(
        f.state.store.as_ref(),
        &f.state.services,
        Some(("198.51.100.5".parse().expect("ip"), 6443)),
    )
    .await
    .expect("kubernetes service");
    let base = "/api/v1/namespaces/default/services";
    let kubernetes = f.get(&format!("{base}/kubernetes")).await;
    assert_eq!(kubernetes.body["spec"]["clusterIP"], "10.43.0.1");
    let ep = f
        .get("/api/v1/namespaces/default/endpoints/kubernetes")
        .await;
    assert_eq!(ep.body["subsets"][0]["addresses"][0]["ip"], "198.51.100.5");

    let svc = |name: &str, spec: Value| json!({"apiVersion":"v1","kind":"Service","metadata":{"name":name},"spec":spec});
    let port = json!([{"port": 80}]);
    let a = f
        .admin(
            "POST",
            base,
            "application/json",
            svc("a", json!({"ports": port})),
        )
        .await;
    assert_eq!(a.code, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["spec"]["clusterIP"], "10.43.1.0");
    assert_eq!(a.body["spec"]["clusterIPs"], json!(["10.43.1.0"]));
    let dns = f
        .admin(
            "POST",
            base,
            "application/json",
            svc("dns", json!({"clusterIP": "10.43.0.10", "ports": port})),
        )
        .await;
    assert_eq!(dns.body["spec"]["clusterIP"], "10.43.0.10");
    let taken = f
        .admin(
            "POST",
            base,
            "application/json",
            svc("dns2", json!({"clusterIP": "10.43.0.10", "ports": port})),
        )
        .await;
    assert_eq!(taken.code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        taken.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("provided IP is already allocated"))
    );
    let outside = f
        .admin(
            "POST",
            base,
            "application/json",
            svc("far", json!({"clusterIP": "10.99.0.1", "ports": port})),
        )
        .await;
    assert_eq!(outside.code, StatusCode::UNPROCESSABLE_ENTITY);

    let np = f
        .admin(
            "POST",
            base,
            "application/json",
            svc(
                "np",
                json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}),
            ),
        )
        .await;
    assert_eq!(np.code, StatusCode::CREATED, "{}", np.body);
    assert_eq!(np.body["spec"]["ports"][0]["nodePort"], 30000);
    assert_eq!(np.body["spec"]["ports"][1]["nodePort"], 30001);
    let clash = f
        .admin(
            "POST",
            base,
            "application/json",
            svc(
                "np2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}),
            ),
        )
        .await;
    assert_eq!(clash.code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        clash.body["details"]["causes"][0]["field"],
        "spec.ports[0].nodePort"
    );

    // Updates keep the allocations; changing the address is refused.
    let mut update = np.body.clone();
    update["spec"]["clusterIP"] = json!("");
    update["spec"]["ports"][0]["nodePort"] = Value::Null;
    let kept = f
        .admin("PUT", &format!("{base}/np"), "application/json", update)
        .await;
    assert_eq!(kept.code, StatusCode::OK, "{}", kept.body);
    assert_eq!(kept.body["spec"]["clusterIP"], np.body["spec"]["clusterIP"]);
    assert_eq!(kept.body["spec"]["ports"][0]["nodePort"], 30000);
    let moved = f
        .admin(
            "PATCH",
            &format!("{base}/a"),
            "application/merge-patch+json",
            json!({"spec": {"clusterIP": "10.43.0.77"}}),
        )
        .await;
    assert_eq!(moved.code, StatusCode::UNPROCESSABLE_ENTITY);

    // Deleting frees the address for the next Service.
    f.admin("DELETE", &format!("{base}/a"), "", Value::Null)
        .await;
    let b = f
        .admin(
            "POST",
            base,
            "application/json",
            svc("b", json!({"ports": port})),
        )
        .await;
    assert_eq!(b.body["spec"]["clusterIP"], "10.43.1.0");

    // ... and its node ports: np2 now gets the port that clashed above.
    f.admin("DELETE", &format!("{base}/np"), "", Value::Null)
        .await;
    let np2 = f
        .admin(
            "POST",
            base,
            "application/json",
            svc(
                "np2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}),
            ),
        )
        .await;
    assert_eq!(np2.code, StatusCode::CREATED, "{}", np2.body);
    assert_eq!(np2.body["spec"]["ports"][0]["nodePort"], 30001);
}

#[tokio::test]
async fn rbac_grants_what_bindings_say_and_nothing_else() {
    let f = fixture().await;
    r3s_server::api::rbac_defaults::ensure(f.state.store.as_ref())
        .await
        .expect("default roles");
    let bob = || {
        Some(PeerIdentity {
            common_name: "bob".into(),
            organizations: vec!["dev".into()],
        })
    };
    let cms = "/api/v1/namespaces/default/configmaps";
    let denied = f.call(bob(), get_req(cms, "application/json")).await;
    assert_eq!(denied.code, StatusCode::FORBIDDEN);

    let binding = json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding",
        "metadata":{"name":"bob-view"},
        "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"},
        "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"bob"}]});
    let created = f
        .admin(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            "application/json",
            binding,
        )
        .await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);

    assert_eq!(
        f.call(bob(), get_req(cms, "application/json")).await.code,
        StatusCode::OK
    );
    let other_ns = "/api/v1/namespaces/kube-system/configmaps";
    assert_eq!(
        f.call(bob(), get_req(other_ns, "application/json"))
            .await
            .code,
        StatusCode::FORBIDDEN
    );
    let create = Request::builder()
        .method("POST")
        .uri(cms)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(cm("bobs", json!({})).to_string()))
        .expect("request");
    let refused = f.call(bob(), create).await;
    assert_eq!(refused.code, StatusCode::FORBIDDEN, "view cannot create");
    let secrets = "/api/v1/namespaces/default/secrets";
    assert_eq!(
        f.call(bob(), get_req(secrets, "application/json"))
            .await
            .code,
        StatusCode::FORBIDDEN
    );

    // A Role of its own, bound to one of bob's groups.
    let role = json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role",
        "metadata":{"name":"secret-reader"},
        "rules":[{"apiGroups":[""],"resources":["secrets"],"verbs":["get","list"]}]});
    f.admin(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        "application/json",
        role,
    )
    .await;
    let group_binding = json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding",
        "metadata":{"name":"devs-secrets"},
        "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"secret-reader"},
        "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"dev"}]});
    f.admin(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        "application/json",
        group_binding,
    )
    .await;
    assert_eq!(
        f.call(bob(), get_req(secrets, "application/json"))
            .await
            .code,
        StatusCode::OK
    );

    let rules_review = Request::builder()
        .method("POST")
        .uri("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectRulesReview",
            "spec":{"namespace":"default"}})
            .to_string(),
        ))
        .expect("request");
    let rules = f.call(bob(), rules_review).await;
    assert_eq!(rules.code, StatusCode::CREATED, "{}", rules.body);
    let granted = rules.body["status"]["resourceRules"].to_string();
    assert!(
        granted.contains("secrets") && granted.contains("configmaps"),
        "{granted}"
    );
}

#[tokio::test]
async fn bound_pods_terminate_gracefully_until_the_agent_confirms() {
    let f = fixture().await;
    let base = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"g1"},
                     "spec":{"nodeName":"node-a","containers":[{"name":"c","image":"busybox"}]}});
    assert_eq!(
        f.admin("POST", base, "application/json", pod).await.code,
        StatusCode::CREATED
    );

    let deleting = f
        .admin("DELETE", &format!("{base}/g1"), "", Value::Null)
        .await;
    assert_eq!(deleting.code, StatusCode::OK);
    assert_eq!(deleting.body["metadata"]["deletionGracePeriodSeconds"], 30);
    let status = f
        .admin(
            "PATCH",
            &format!("{base}/g1/status"),
            "application/merge-patch+json",
            json!({"status":{"phase":"Running"}}),
        )
        .await;
    assert_eq!(status.code, StatusCode::OK, "{}", status.body);
    assert_eq!(
        f.get(&format!("{base}/g1")).await.code,
        StatusCode::OK,
        "still terminating"
    );

    let confirmed = f
        .admin(
            "DELETE",
            &format!("{base}/g1"),
            "application/json",
            json!({"gracePeriodSeconds": 0}),
        )
        .await;
    assert_eq!(confirmed.code, StatusCode::OK);
    assert_eq!(
        f.get(&format!("{base}/g1")).await.code,
        StatusCode::NOT_FOUND
    );

    let cms = "/api/v1/namespaces/default/configmaps";
    f.admin("POST", cms, "application/json", cm("fg", json!({})))
        .await;
    let fg = f
        .admin(
            "DELETE",
            &format!("{cms}/fg"),
            "application/json",
            json!({"propagationPolicy": "Foreground"}),
        )
        .await;
    assert_eq!(
        fg.body["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    assert_eq!(
        f.get(&format!("{cms}/fg")).await.code,
        StatusCode::OK,
        "left to the GC"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_verb_resource_and_code() {
    let f = fixture().await;
    f.get("/api/v1/namespaces/default/configmaps").await;
    f.get("/api/v1/namespaces/default/configmaps/missing").await;
    let anonymous = f.call(None, get_req("/metrics", "text/plain")).await;
    assert_eq!(anonymous.code, StatusCode::UNAUTHORIZED);
    let text = f.get("/metrics").await.body;
    let text = text.as_str().expect("text exposition");
    assert!(
        text.contains(
            "apiserver_request_total{verb=\"LIST\",resource=\"configmaps\",code=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "apiserver_request_total{verb=\"GET\",resource=\"configmaps\",code=\"404\"} 1"
        )
    );
    assert!(text.contains("apiserver_request_duration_seconds_count{verb=\"LIST\"} 1"));
    assert!(text.contains("apiserver_longrunning_requests{verb=\"WATCH\"} 0"));
    // The store's latency, by operation and resource (kube-apiserver's etcd metric): the two
    // requests above read the store once each.
    for op in ["list", "get"] {
        let line = format!(
            "etcd_request_duration_seconds_count{{operation=\"{op}\",type=\"configmaps\"}} "
        );
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {text}"));
        assert!(count >= 1, "{line}{count}");
    }
    assert!(text.contains("# TYPE etcd_request_duration_seconds histogram"));
}

#[tokio::test]
async fn node_agents_get_the_system_node_role() {
    let f = fixture().await;
    r3s_server::api::rbac_defaults::ensure(f.state.store.as_ref())
        .await
        .expect("default roles");
    let node = || {
        Some(PeerIdentity {
            common_name: "system:node:n1".into(),
            organizations: vec!["system:nodes".into()],
        })
    };
    let register = Request::builder()
        .method("POST")
        .uri("/api/v1/nodes")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}).to_string(),
        ))
        .expect("request");
    let registered = f.call(node(), register).await;
    assert_eq!(registered.code, StatusCode::CREATED, "{}", registered.body);
    let pods = f
        .call(
            node(),
            get_req(
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
                "application/json",
            ),
        )
        .await;
    assert_eq!(pods.code, StatusCode::OK);
    let deploys = f
        .call(
            node(),
            get_req(
                "/apis/apps/v1/namespaces/default/deployments",
                "application/json",
            ),
        )
        .await;
    assert_eq!(
        deploys.code,
        StatusCode::FORBIDDEN,
        "nodes do not read deployments"
    );
}

fn widget_crd() -> Value {
    json!({"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
        "metadata":{"name":"widgets.example.com"},
        "spec":{"group":"example.com","scope":"Namespaced",
            "names":{"plural":"widgets","singular":"widget","kind":"Widget","shortNames":["wd"]},
            "versions":[{"name":"v1","served":true,"storage":true,
                         "subresources":{"status":{}},
                         "schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}})
}

#[tokio::test]
async fn crds_serve_their_custom_resources_at_once() {
    let f = fixture().await;
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let created = f
        .admin("POST", crds, "application/json", widget_crd())
        .await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    let crd = f.get(&format!("{crds}/widgets.example.com")).await;
    assert_eq!(crd.body["status"]["conditions"][1]["type"], "Established");

    let list = f.get("/apis/example.com/v1").await;
    assert_eq!(list.body["resources"][0]["name"], "widgets");
    assert_eq!(list.body["resources"][1]["name"], "widgets/status");
    let groups = f.get("/apis").await;
    assert!(groups.body["groups"].to_string().contains("example.com/v1"));

    let base = "/apis/example.com/v1/namespaces/default/widgets";
    let w = json!({"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1"},
                   "spec":{"size":3},"status":{"ignored":true}});
    let made = f.admin("POST", base, "application/json", w).await;
    assert_eq!(made.code, StatusCode::CREATED, "{}", made.body);
    assert_eq!(made.body["metadata"]["generation"], 1);
    assert!(
        made.body.get("status").is_none(),
        "status only through /status"
    );
    let status = f
        .admin(
            "PATCH",
            &format!("{base}/w1/status"),
            "application/merge-patch+json",
            json!({"status":{"ready":true}}),
        )
        .await;
    assert_eq!(status.body["status"]["ready"], true, "{}", status.body);
    let patched = f
        .admin(
            "PATCH",
            &format!("{base}/w1"),
            "application/merge-patch+json",
            json!({"spec":{"size":4}}),
        )
        .await;
    assert_eq!(patched.body["metadata"]["generation"], 2);
    assert_eq!(f.get(base).await.body["kind"], "WidgetList");

    let bad = f
        .admin(
            "POST",
            crds,
            "application/json",
            json!({"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
                   "metadata":{"name":"wrong"},"spec":{"group":"example.com","scope":"Namespaced",
                   "names":{"plural":"gadgets","kind":"Gadget"},"versions":[]}}),
        )
        .await;
    assert_eq!(bad.code, StatusCode::UNPROCESSABLE_ENTITY);

    let deleted = f
        .admin(
            "DELETE",
            &format!("{crds}/widgets.example.com"),
            "",
            Value::Null,
        )
        .await;
    assert_eq!(deleted.code, StatusCode::OK);
    assert_eq!(f.get(base).await.code, StatusCode::NOT_FOUND);
    assert_eq!(
        f.get("/apis/example.com/v1").await.code,
        StatusCode::NOT_FOUND
    );
    // Recreating the CRD does not bring the old objects back.
    f.admin("POST", crds, "application/json", widget_crd())
        .await;
    assert_eq!(f.get(base).await.body["items"], json!([]));
}

#[tokio::test]
async fn node_restriction_on_create() {
    let f = fixture().await;
    let n1 = || {
        Some(PeerIdentity {
            common_name: "system:node:n1".into(),
            organizations: vec!["system:nodes".into()],
        })
    };
    let post = |uri: &str, body: Value| {
        Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    let other = f
        .call(
            n1(),
            post(
                "/api/v1/nodes",
                json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n2"}}),
            ),
        )
        .await;
    assert_eq!(other.code, StatusCode::FORBIDDEN, "{}", other.body);
    assert_eq!(
        other.body["message"],
        "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
    );
    let own = f
        .call(
            n1(),
            post(
                "/api/v1/nodes",
                json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}),
            ),
        )
        .await;
    assert_eq!(own.code, StatusCode::CREATED, "{}", own.body);
    // Pods: RBAC lets nodes create pods only through this binding; NodeRestriction still refuses
    // pods bound elsewhere and non-mirror pods.
    f.admin(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "application/json",
        json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole",
               "metadata":{"name":"system:r3s-test:pod-creator"},
               "rules":[{"apiGroups":[""],"resources":["pods"],"verbs":["create"]}]}),
    )
    .await;
    let binding = f
        .admin(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "application/json",
            json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding",
                   "metadata":{"name":"system:r3s-test:pod-creator"},
                   "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"system:r3s-test:pod-creator"},
                   "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"system:nodes"}]}),
        )
        .await;
    assert_eq!(
        binding.code,
        StatusCode::CREATED,
        "names with ':' are valid for RBAC: {}",
        binding.body
    );
    let pod = |node: &str, mirror: bool| {
        let mut p = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":format!("p-{node}-{mirror}")},
                           "spec":{"nodeName":node,"containers":[{"name":"c","image":"busybox"}]}});
        if mirror {
            p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "hash"});
        }
        p
    };
    let pods = "/api/v1/namespaces/default/pods";
    let elsewhere = f.call(n1(), post(pods, pod("n2", true))).await;
    assert_eq!(elsewhere.code, StatusCode::FORBIDDEN, "{}", elsewhere.body);
    assert!(
        elsewhere.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("can only create pods with spec.nodeName set to itself")),
        "{}",
        elsewhere.body
    );
    let not_mirror = f.call(n1(), post(pods, pod("n1", false))).await;
    assert_eq!(
        not_mirror.code,
        StatusCode::FORBIDDEN,
        "{}",
        not_mirror.body
    );
    let mirror = f.call(n1(), post(pods, pod("n1", true))).await;
    assert_eq!(mirror.code, StatusCode::CREATED, "{}", mirror.body);
    // Create-on-apply goes through the same check.
    let applied = f
        .call(
            n1(),
            Request::builder()
                .method("PATCH")
                .uri("/api/v1/nodes/n3?fieldManager=agent")
                .header(header::CONTENT_TYPE, "application/apply-patch+yaml")
                .body(Body::from(
                    json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n3"}}).to_string(),
                ))
                .expect("request"),
        )
        .await;
    assert_eq!(applied.code, StatusCode::FORBIDDEN, "{}", applied.body);
}

#[tokio::test]
async fn rbac_names_are_path_segments() {
    let f = fixture().await;
    let roles = "/apis/rbac.authorization.k8s.io/v1/clusterroles";
    let role = |name: &str| {
        json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole",
               "metadata":{"name":name},"rules":[]})
    };
    let ok = f
        .admin("POST", roles, "application/json", role("system:foo"))
        .await;
    assert_eq!(ok.code, StatusCode::CREATED, "{}", ok.body);
    assert_eq!(
        f.get(&format!("{roles}/system:foo")).await.code,
        StatusCode::OK
    );
    let bad = f
        .admin("POST", roles, "application/json", role("a/b"))
        .await;
    assert_eq!(bad.code, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(
        bad.body["details"]["causes"][0]["message"],
        "Invalid value: \"a/b\": may not contain '/'"
    );
    // Other kinds keep the DNS subdomain rule.
    let cm = f
        .admin(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            cm("a:b", json!({})),
        )
        .await;
    assert_eq!(cm.code, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn storage_and_quota_kinds_are_served_with_tables() {
    let f = fixture().await;
    let table_accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let cases = [
        (
            "/apis/storage.k8s.io/v1/storageclasses",
            json!({"apiVersion":"storage.k8s.io/v1","kind":"StorageClass","metadata":{"name":"local"},
                   "provisioner":"rancher.io/local-path"}),
            vec![
                "Name",
                "Provisioner",
                "ReclaimPolicy",
                "VolumeBindingMode",
                "AllowVolumeExpansion",
                "Age",
            ],
            json!([
                "local",
                "rancher.io/local-path",
                "Delete",
                "Immediate",
                "false"
            ]),
        ),
        (
            "/api/v1/persistentvolumes",
            json!({"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"pv1"},
                   "spec":{"capacity":{"storage":"1Gi"},"accessModes":["ReadWriteOnce"],"hostPath":{"path":"/tmp/pv1"},
                           "storageClassName":"local"}}),
            vec![
                "Name",
                "Capacity",
                "Access Modes",
                "Reclaim Policy",
                "Status",
                "Claim",
                "StorageClass",
                "VolumeAttributesClass",
                "Reason",
                "Age",
                "VolumeMode",
            ],
            json!([
                "pv1", "1Gi", "RWO", "Retain", "Pending", "", "local", "<unset>", ""
            ]),
        ),
        (
            "/api/v1/namespaces/default/persistentvolumeclaims",
            json!({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"data"},
                   "spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}}}}),
            vec![
                "Name",
                "Status",
                "Volume",
                "Capacity",
                "Access Modes",
                "StorageClass",
                "VolumeAttributesClass",
                "Age",
                "VolumeMode",
            ],
            // New claims and volumes start Pending, as upstream's strategies set them.
            json!(["data", "Pending", "", "", "", "", "<unset>"]),
        ),
        (
            "/api/v1/namespaces/default/resourcequotas",
            json!({"apiVersion":"v1","kind":"ResourceQuota","metadata":{"name":"q"},
                   "spec":{"hard":{"pods":"10","limits.cpu":"2"}}}),
            vec!["Name", "Age", "Request", "Limit"],
            json!(["q"]),
        ),
        (
            "/api/v1/namespaces/default/limitranges",
            json!({"apiVersion":"v1","kind":"LimitRange","metadata":{"name":"l"},
                   "spec":{"limits":[{"type":"Container","default":{"cpu":"100m"}}]}}),
            vec!["Name", "Created At"],
            json!(["l"]),
        ),
    ];
    for (uri, body, columns, first_cells) in cases {
        let created = f.admin("POST", uri, "application/json", body).await;
        assert_eq!(created.code, StatusCode::CREATED, "{uri}: {}", created.body);
        let table = f.call(Some(admin()), get_req(uri, table_accept)).await;
        assert_eq!(table.code, StatusCode::OK, "{uri}");
        let names: Vec<&str> = table.body["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, columns, "{uri}");
        let cells = &table.body["rows"][0]["cells"];
        for (i, want) in first_cells.as_array().expect("cells").iter().enumerate() {
            assert_eq!(&cells[i], want, "{uri} cell {i}: {cells}");
        }
    }
    let quota = f
        .call(
            Some(admin()),
            get_req("/api/v1/namespaces/default/resourcequotas", table_accept),
        )
        .await;
    assert_eq!(quota.body["rows"][0]["cells"][2], "pods: 0/10");
    assert_eq!(quota.body["rows"][0]["cells"][3], "limits.cpu: 0/2");
}
