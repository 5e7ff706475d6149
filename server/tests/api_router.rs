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
        state: ApiState {
            store,
            advertise_address: "127.0.0.1:6443".into(),
        },
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
    assert_eq!(r.code, StatusCode::FORBIDDEN);
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
    assert_eq!(names, ["apps", "coordination.k8s.io"]);

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
    assert_eq!(proto.code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(proto.body["reason"], "UnsupportedMediaType");

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
    assert_eq!(
        containers,
        &json!([{"name":"a","image":"nginx:2","env":[{"name":"X","value":"1"}]}])
    );
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
    assert_eq!(ssa.code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
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
