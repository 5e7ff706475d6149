//! A container's environment as kubelet builds it: the image's `Env`, then `envFrom` sources,
//! then `env` entries (values with `$(VAR)` expansion, fieldRef, resourceFieldRef,
//! configMapKeyRef, secretKeyRef), later definitions overriding earlier ones.
//!
//! ConfigMaps and Secrets are read from the API when the container starts (no cache yet). A
//! missing object or key is an error unless the reference is `optional`, which kubelet reports
//! as `CreateContainerConfigError`. Service environment variables (`<SVC>_SERVICE_HOST`,
//! Docker-link style `<SVC>_PORT_*`) come first, for the pod's namespace's Services when
//! `enableServiceLinks` is not false and always for `default/kubernetes` (what in-cluster clients
//! read), as kubelet does.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::Api;

use super::quantity;

/// Why an environment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{kind} {namespace}/{name} not found")]
    Missing {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Api {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("env {var}: unsupported field path {path}")]
    FieldPath { var: String, path: String },
    #[error("env {var}: {message}")]
    Resource { var: String, message: String },
}

/// The facts a fieldRef or resourceFieldRef can read besides the pod itself.
#[derive(Debug, Clone)]
pub struct Facts {
    pub host_ip: IpAddr,
    pub pod_ip: Option<IpAddr>,
    /// Node allocatable, for resourceFieldRefs to unset limits.
    pub node_milli_cpu: i64,
    pub node_memory_bytes: i64,
}

/// Builds `NAME=value` strings.
pub async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    image_env: &[String],
    facts: &Facts,
) -> Result<Vec<String>, EnvError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut defined: Vec<(String, String)> = Vec::new();
    let set = |defined: &mut Vec<(String, String)>, k: String, v: String| {
        defined.retain(|(n, _)| *n != k);
        defined.push((k, v));
    };
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    for svc in services(client, &ns, links).await {
        for (k, v) in service_env(&svc) {
            set(&mut defined, k, v);
        }
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            if let Some(data) = config_map(client, &ns, &r.name, optional).await? {
                for (k, v) in data {
                    set(&mut defined, format!("{prefix}{k}"), v);
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            if let Some(data) = secret(client, &ns, &r.name, optional).await? {
                for (k, v) in data {
                    set(&mut defined, format!("{prefix}{k}"), v);
                }
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => Some(expand(e.value.as_deref().unwrap_or(""), &defined)),
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    Some(field(pod, facts, &e.name, &f.field_path)?)
                } else if let Some(r) = &src.resource_field_ref {
                    Some(resource(
                        c,
                        facts,
                        &e.name,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                    )?)
                } else if let Some(r) = &src.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match config_map(client, &ns, &r.name, optional).await? {
                        None => None,
                        Some(data) => match data.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(EnvError::MissingKey {
                                    kind: "configmap",
                                    namespace: ns,
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match secret(client, &ns, &r.name, optional).await? {
                        None => None,
                        Some(data) => match data.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(EnvError::MissingKey {
                                    kind: "secret",
                                    namespace: ns,
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                    }
                } else {
                    None
                }
            }
        };
        if let Some(v) = value {
            set(&mut defined, e.name.clone(), v);
        }
    }
    let mut out: Vec<String> = image_env
        .iter()
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or("");
            !defined.iter().any(|(n, _)| n == k)
        })
        .cloned()
        .collect();
    out.extend(defined.into_iter().map(|(k, v)| format!("{k}={v}")));
    Ok(out)
}

/// The Services whose variables a container gets (a failed list only loses the variables: the
/// API being briefly unreachable must not stop a restart).
async fn services(client: &kube::Client, ns: &str, links: bool) -> Vec<Service> {
    let mut out = Vec::new();
    if links {
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        if let Ok(list) = api.list(&Default::default()).await {
            out.extend(list.items);
        }
    }
    if !(links && ns == "default") {
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        if let Ok(Some(k)) = api.get_opt("kubernetes").await {
            out.push(k);
        }
    }
    out
}

/// One Service's variables: `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORTNAME>]`, and the
/// Docker-link `<NAME>_PORT[_<port>_<PROTO>[_PROTO|_PORT|_ADDR]]`. Headless and portless Services
/// get none.
pub fn service_env(svc: &Service) -> Vec<(String, String)> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let ip = match spec.cluster_ip.as_deref() {
        Some(ip) if !ip.is_empty() && ip != "None" => ip.to_owned(),
        _ => return Vec::new(),
    };
    let ports = spec.ports.clone().unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let name = svc
        .metadata
        .name
        .clone()
        .unwrap_or_default()
        .to_ascii_uppercase()
        .replace('-', "_");
    let mut out = vec![
        (format!("{name}_SERVICE_HOST"), ip.clone()),
        (format!("{name}_SERVICE_PORT"), first.port.to_string()),
    ];
    for p in &ports {
        if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!(
                    "{name}_SERVICE_PORT_{}",
                    pn.to_ascii_uppercase().replace('-', "_")
                ),
                p.port.to_string(),
            ));
        }
    }
    let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".into())
    };
    out.push((
        format!("{name}_PORT"),
        format!(
            "{}://{ip}:{}",
            proto(first).to_ascii_lowercase(),
            first.port
        ),
    ));
    for p in &ports {
        let pr = proto(p);
        let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_ascii_uppercase());
        out.push((
            prefix.clone(),
            format!("{}://{ip}:{}", pr.to_ascii_lowercase(), p.port),
        ));
        out.push((format!("{prefix}_PROTO"), pr.to_ascii_lowercase()));
        out.push((format!("{prefix}_PORT"), p.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.clone()));
    }
    out
}

async fn config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(cm)) => Ok(Some(cm.data.unwrap_or_default())),
        Ok(None) if optional => Ok(None),
        Ok(None) => Err(EnvError::Missing {
            kind: "configmap",
            namespace: ns.into(),
            name: name.into(),
        }),
        Err(source) => Err(EnvError::Api {
            kind: "configmap",
            namespace: ns.into(),
            name: name.into(),
            source: Box::new(source),
        }),
    }
}

async fn secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(s)) => {
            let mut out: BTreeMap<String, String> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                out.insert(k, v);
            }
            Ok(Some(out))
        }
        Ok(None) if optional => Ok(None),
        Ok(None) => Err(EnvError::Missing {
            kind: "secret",
            namespace: ns.into(),
            name: name.into(),
        }),
        Err(source) => Err(EnvError::Api {
            kind: "secret",
            namespace: ns.into(),
            name: name.into(),
            source: Box::new(source),
        }),
    }
}

/// `$(VAR)` expansion against the variables defined so far; `$$` escapes; unknown references stay.
pub fn expand(s: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn bracketed<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let inner = path
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    Some(inner.trim_matches(|c| c == '\'' || c == '"'))
}

/// A fieldRef's value.
pub fn field(pod: &Pod, facts: &Facts, var: &str, path: &str) -> Result<String, EnvError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let v = match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => {
            facts.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
        }
        p => {
            if let Some(k) = bracketed(p, "metadata.labels") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = bracketed(p, "metadata.annotations") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default()
            } else {
                return Err(EnvError::FieldPath {
                    var: var.into(),
                    path: p.into(),
                });
            }
        }
    };
    Ok(v)
}

/// A resourceFieldRef's value: the container's limit or request divided by `divisor` (rounded up);
/// an unset limit reads as the node's allocatable, as in kubelet.
pub fn resource(
    c: &Container,
    facts: &Facts,
    var: &str,
    res: &str,
    divisor: Option<&str>,
) -> Result<String, EnvError> {
    let err = |message: String| EnvError::Resource {
        var: var.into(),
        message,
    };
    let r = c.resources.as_ref();
    let (map, name) = match res.split_once('.') {
        Some(("limits", n)) => (r.and_then(|r| r.limits.as_ref()), n),
        Some(("requests", n)) => (r.and_then(|r| r.requests.as_ref()), n),
        _ => return Err(err(format!("unsupported resource {res}"))),
    };
    let set = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    let cpu = name == "cpu";
    let value = match (set, cpu) {
        (Some(q), _) => quantity::parse(&q).map_err(|e| err(e.to_string()))?,
        (None, true) if res.starts_with("limits") => facts.node_milli_cpu as f64 / 1000.0,
        (None, false) if res.starts_with("limits") => facts.node_memory_bytes as f64,
        (None, _) => 0.0,
    };
    let div = match divisor {
        Some(d) if !d.is_empty() => quantity::parse(d).map_err(|e| err(e.to_string()))?,
        _ => 1.0,
    };
    if div <= 0.0 {
        return Err(err("divisor must be positive".into()));
    }
    Ok(format!("{}", (value / div).ceil() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let d = vec![("A".to_string(), "1".to_string()), ("B".into(), "x".into())];
        assert_eq!(expand("$(A)-$(B)-$(C)", &d), "1-x-$(C)");
        assert_eq!(expand("$$(A) $ $(", &d), "$(A) $ $(");
    }

    #[test]
    fn service_variables() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "my-db"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "sql", "port": 5432}, {"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let env: std::collections::HashMap<String, String> =
            service_env(&svc).into_iter().collect();
        assert_eq!(env["MY_DB_SERVICE_HOST"], "10.43.0.20");
        assert_eq!(env["MY_DB_SERVICE_PORT"], "5432");
        assert_eq!(env["MY_DB_SERVICE_PORT_SQL"], "5432");
        assert_eq!(env["MY_DB_PORT"], "tcp://10.43.0.20:5432");
        assert_eq!(env["MY_DB_PORT_53_UDP"], "udp://10.43.0.20:53");
        assert_eq!(env["MY_DB_PORT_53_UDP_ADDR"], "10.43.0.20");
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }))
        .unwrap();
        assert!(service_env(&headless).is_empty());
    }

    #[test]
    fn fields() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]}
        }))
        .unwrap();
        let facts = Facts {
            host_ip: "10.0.0.1".parse().unwrap(),
            pod_ip: Some("10.42.0.3".parse().unwrap()),
            node_milli_cpu: 2000,
            node_memory_bytes: 1 << 30,
        };
        assert_eq!(
            field(&pod, &facts, "X", "metadata.labels['app']").unwrap(),
            "web"
        );
        assert_eq!(field(&pod, &facts, "X", "spec.nodeName").unwrap(), "n1");
        assert_eq!(
            field(&pod, &facts, "X", "status.podIP").unwrap(),
            "10.42.0.3"
        );
        assert!(field(&pod, &facts, "X", "spec.nope").is_err());
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resource(c, &facts, "M", "limits.memory", Some("1Mi")).unwrap(),
            "64"
        );
        assert_eq!(resource(c, &facts, "C", "limits.cpu", None).unwrap(), "2");
    }
}
