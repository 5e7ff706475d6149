//! Discovery, version and health endpoints, all derived from the registry.
//!
//! Both discovery forms are served: aggregated (`apidiscovery.k8s.io/v2`, chosen only when the
//! client's Accept asks for it; the response content type is how client-go tells them apart) and
//! legacy (`APIVersions`, `APIGroupList`, `APIGroup`, `APIResourceList`), which kube-rs and the
//! Python client use.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::registry::{self, Resource};

/// The content type of aggregated discovery responses.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub async fn version() -> Response {
    json_response(json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0+r3s",
        "gitCommit": "r3s",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("linux/{}", go_arch()),
    }))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

pub async fn health() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response()
}

/// `GET /api`.
pub async fn core_versions(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        let item = group_discovery(&[], "", &["v1"]);
        return aggregated(vec![item]);
    }
    json_response(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{
            "clientCIDR": "0.0.0.0/0", "serverAddress": state.advertise_address,
        }],
    }))
}

/// `GET /apis`.
pub async fn group_list(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let custom = state.custom.snapshot();
    let groups = registry::groups(&custom);
    if wants_aggregated(&headers) {
        let items = groups
            .iter()
            .map(|(g, versions)| group_discovery(&custom, g, versions))
            .collect();
        return aggregated(items);
    }
    let groups: Vec<Value> = groups.iter().map(|(g, v)| api_group(g, v)).collect();
    json_response(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

/// `GET /apis/<group>`.
pub fn group(custom: &[&'static Resource], group: &str) -> Result<Response, ApiError> {
    let (g, versions) = registry::groups(custom)
        .into_iter()
        .find(|(g, _)| *g == group)
        .ok_or(ApiError::NoRoute)?;
    Ok(json_response(api_group(g, &versions)))
}

/// `GET /api/v1` and `GET /apis/<group>/<version>`: the legacy resource list.
pub fn resource_list(
    custom: &[&'static Resource],
    group: &str,
    version: &str,
) -> Result<Response, ApiError> {
    let resources = registry::in_group_version(custom, group, version);
    if resources.is_empty() {
        return Err(ApiError::NoRoute);
    }
    let mut list = Vec::new();
    for r in resources {
        list.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": r.verbs, "shortNames": r.short_names,
            "categories": r.categories, "storageVersionHash": "",
        }));
        for sub in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, sub.name), "singularName": "",
                "namespaced": r.namespaced, "kind": r.kind, "verbs": sub.verbs,
            });
            if let Some((g, v, k)) = sub.kind {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
                entry["kind"] = json!(k);
            }
            list.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": list,
    })))
}

fn api_group(group: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": group,
        "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null), "versions": gvs,
    })
}

fn group_discovery(custom: &[&'static Resource], group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({"version": v, "freshness": "Current",
                        "resources": version_discovery(custom, group, v)})
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

fn version_discovery(custom: &[&'static Resource], group: &str, version: &str) -> Vec<Value> {
    registry::in_group_version(custom, group, version)
        .into_iter()
        .map(|r| {
            let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
            json!({
                "resource": r.plural, "singularResource": r.singular,
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "responseKind": kind, "verbs": r.verbs,
                "shortNames": r.short_names, "categories": r.categories,
                "subresources": r.subresources.iter().map(|s| json!({
                    "subresource": s.name, "verbs": s.verbs,
                    "responseKind": s.kind.map_or(kind.clone(), |(g, v, k)| {
                        json!({"group": g, "version": v, "kind": k})
                    }),
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn aggregated(items: Vec<Value>) -> Response {
    let body = json!({
        "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {}, "items": items,
    });
    (
        [(header::CONTENT_TYPE, AGGREGATED_CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// True if one of the Accept media ranges asks for `apidiscovery.k8s.io/v2` aggregated discovery.
fn wants_aggregated(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    accept.split(',').any(|range| {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

pub fn json_response(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
