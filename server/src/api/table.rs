//! Server-side `Table` output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): column
//! definitions per kind, mimicking the apiserver's printers, and the conversion of objects to rows.
//!
//! A column's cell is a pure function of the object. `Name` is always first; priority-1 columns are
//! shown by kubectl only with `-o wide`. Rows carry the object as `PartialObjectMetadata` by default
//! (kubectl needs namespace and labels from it), the full object with `includeObject=Object`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// One table column.
#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub priority: u8,
    pub description: &'static str,
    pub cell: fn(&Value) -> Value,
}

const fn col(name: &'static str, priority: u8, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "string",
        priority,
        description: "",
        cell,
    }
}

const fn int(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "integer",
        priority: 0,
        description: "",
        cell,
    }
}

const AGE: Column = col("Age", 0, age);

pub const AGE_ONLY: &[Column] = &[AGE];
pub const NAMESPACE: &[Column] = &[col("Status", 0, |o| s(&o["status"]["phase"])), AGE];
pub const CONFIGMAP: &[Column] = &[int("Data", data_count), AGE];
pub const SECRET: &[Column] = &[
    col("Type", 0, |o| s(&o["type"])),
    int("Data", data_count),
    AGE,
];
pub const SERVICEACCOUNT: &[Column] = &[int("Secrets", |o| len(&o["secrets"])), AGE];
pub const POD: &[Column] = &[
    col("Ready", 0, pod_ready),
    col("Status", 0, pod_status),
    int("Restarts", pod_restarts),
    AGE,
    col("IP", 1, |o| or_none(&o["status"]["podIP"])),
    col("Node", 1, |o| or_none(&o["spec"]["nodeName"])),
    col("Nominated Node", 1, |o| {
        or_none(&o["status"]["nominatedNodeName"])
    }),
    col("Readiness Gates", 1, |_| json!("<none>")),
];
pub const DEPLOYMENT: &[Column] = &[
    col("Ready", 0, |o| {
        json!(format!(
            "{}/{}",
            n(&o["status"]["readyReplicas"]),
            n(&o["spec"]["replicas"])
        ))
    }),
    int("Up-to-date", |o| json!(n(&o["status"]["updatedReplicas"]))),
    int("Available", |o| json!(n(&o["status"]["availableReplicas"]))),
    AGE,
    col("Containers", 1, |o| template_containers(o, "name")),
    col("Images", 1, |o| template_containers(o, "image")),
    col("Selector", 1, selector),
];
pub const REPLICASET: &[Column] = &[
    int("Desired", |o| json!(n(&o["spec"]["replicas"]))),
    int("Current", |o| json!(n(&o["status"]["replicas"]))),
    int("Ready", |o| json!(n(&o["status"]["readyReplicas"]))),
    AGE,
    col("Containers", 1, |o| template_containers(o, "name")),
    col("Images", 1, |o| template_containers(o, "image")),
    col("Selector", 1, selector),
];
pub const SERVICE: &[Column] = &[
    col("Type", 0, |o| {
        json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP"))
    }),
    col("Cluster-IP", 0, |o| or_none(&o["spec"]["clusterIP"])),
    col("External-IP", 0, service_external_ip),
    col("Port(s)", 0, service_ports),
    AGE,
    col("Selector", 1, |o| labels_text(&o["spec"]["selector"])),
];
pub const NODE: &[Column] = &[
    col("Status", 0, node_status),
    col("Roles", 0, node_roles),
    AGE,
    col("Version", 0, |o| {
        s(&o["status"]["nodeInfo"]["kubeletVersion"])
    }),
    col("Internal-IP", 1, |o| node_address(o, "InternalIP")),
    col("External-IP", 1, |o| node_address(o, "ExternalIP")),
    col("OS-Image", 1, |o| s(&o["status"]["nodeInfo"]["osImage"])),
    col("Kernel-Version", 1, |o| {
        s(&o["status"]["nodeInfo"]["kernelVersion"])
    }),
    col("Container-Runtime", 1, |o| {
        s(&o["status"]["nodeInfo"]["containerRuntimeVersion"])
    }),
];

/// What each row's `object` holds (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> IncludeObject {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// The column definitions of a table of `columns` (with the leading `Name`).
pub fn column_definitions(columns: &[Column]) -> Value {
    let mut defs = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    defs.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.kind, "format": "", "priority": c.priority,
               "description": c.description})
    }));
    Value::Array(defs)
}

/// One row for `obj`.
pub fn row(columns: &[Column], obj: &Value, include: IncludeObject) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    cells.extend(columns.iter().map(|c| (c.cell)(obj)));
    let mut row = json!({ "cells": cells });
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = obj.clone(),
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"].clone(),
            })
        }
    }
    row
}

/// A whole Table; `list_metadata` is the list's `{resourceVersion, continue}`.
pub fn table(
    columns: &[Column],
    objects: &[Value],
    include: IncludeObject,
    list_metadata: Value,
    with_definitions: bool,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": if with_definitions { column_definitions(columns) } else { json!([]) },
        "rows": objects.iter().map(|o| row(columns, o, include)).collect::<Vec<_>>(),
    })
}

fn s(v: &Value) -> Value {
    json!(v.as_str().unwrap_or(""))
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn or_none(v: &Value) -> Value {
    match v.as_str() {
        Some(text) if !text.is_empty() => json!(text),
        _ => json!("<none>"),
    }
}

fn len(v: &Value) -> Value {
    json!(v.as_array().map_or(0, Vec::len))
}

fn data_count(o: &Value) -> Value {
    let count = |v: &Value| v.as_object().map_or(0, |m| m.len());
    json!(count(&o["data"]) + count(&o["binaryData"]))
}

fn age(o: &Value) -> Value {
    let created = o["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    match created {
        Some(t) => json!(human_duration(
            (Utc::now() - t.with_timezone(&Utc)).num_seconds()
        )),
        None => json!("<unknown>"),
    }
}

/// kubectl's short human-readable durations (`45s`, `3m20s`, `5h`, `12d`, `2y30d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    let with = |big: i64, bu: &str, small: i64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        with(m, "m", secs % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(d, "d", h % 24, "h")
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        with(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

fn pod_ready(o: &Value) -> Value {
    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = o["status"]["containerStatuses"].as_array().map_or(0, |cs| {
        cs.iter().filter(|c| c["ready"] == json!(true)).count()
    });
    json!(format!("{ready}/{total}"))
}

fn pod_status(o: &Value) -> Value {
    if o["metadata"]["deletionTimestamp"].is_string() {
        return json!("Terminating");
    }
    let waiting = o["status"]["containerStatuses"].as_array().and_then(|cs| {
        cs.iter()
            .find_map(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_string))
    });
    match waiting {
        Some(reason) if !reason.is_empty() => json!(reason),
        _ => json!(o["status"]["phase"].as_str().unwrap_or("Pending")),
    }
}

fn pod_restarts(o: &Value) -> Value {
    json!(o["status"]["containerStatuses"].as_array().map_or(0, |cs| {
        cs.iter().map(|c| n(&c["restartCount"])).sum::<i64>()
    }))
}

fn template_containers(o: &Value, field: &str) -> Value {
    let containers = o["spec"]["template"]["spec"]["containers"].as_array();
    json!(containers.map_or(String::new(), |cs| {
        cs.iter()
            .filter_map(|c| c[field].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }))
}

fn labels_text(map: &Value) -> Value {
    match map.as_object() {
        Some(m) if !m.is_empty() => json!(
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => json!("<none>"),
    }
}

fn selector(o: &Value) -> Value {
    labels_text(&o["spec"]["selector"]["matchLabels"])
}

fn service_external_ip(o: &Value) -> Value {
    let ingress = o["status"]["loadBalancer"]["ingress"].as_array();
    let ips: Vec<&str> = ingress.map_or(Vec::new(), |i| {
        i.iter().filter_map(|e| e["ip"].as_str()).collect()
    });
    if !ips.is_empty() {
        json!(ips.join(","))
    } else if o["spec"]["type"] == json!("LoadBalancer") {
        json!("<pending>")
    } else {
        json!("<none>")
    }
}

fn service_ports(o: &Value) -> Value {
    let ports = o["spec"]["ports"].as_array();
    let text = ports.map_or(Vec::new(), |ps| {
        ps.iter()
            .map(|p| {
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                match p["nodePort"].as_i64() {
                    Some(np) => format!("{}:{np}/{proto}", n(&p["port"])),
                    None => format!("{}/{proto}", n(&p["port"])),
                }
            })
            .collect()
    });
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text.join(","))
    }
}

fn node_status(o: &Value) -> Value {
    let ready = o["status"]["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["type"] == json!("Ready"))
            .map(|c| c["status"] == json!("True"))
    });
    let mut status = match ready {
        Some(true) => "Ready".to_string(),
        Some(false) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o["spec"]["unschedulable"] == json!(true) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_roles(o: &Value) -> Value {
    let roles: Vec<&str> = o["metadata"]["labels"].as_object().map_or(Vec::new(), |m| {
        m.keys()
            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
            .collect()
    });
    if roles.is_empty() {
        json!("<none>")
    } else {
        json!(roles.join(","))
    }
}

fn node_address(o: &Value, kind: &str) -> Value {
    let addr = o["status"]["addresses"].as_array().and_then(|a| {
        a.iter()
            .find(|x| x["type"] == json!(kind))
            .and_then(|x| x["address"].as_str())
    });
    json!(addr.unwrap_or("<none>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_row_has_upstream_cells() {
        let pod = json!({"metadata":{"name":"p","creationTimestamp":"2020-01-01T00:00:00Z"},
            "spec":{"containers":[{"name":"a"},{"name":"b"}]},
            "status":{"phase":"Running","containerStatuses":[{"ready":true,"restartCount":2},
                                                              {"ready":false,"restartCount":1}]}});
        let r = row(POD, &pod, IncludeObject::None);
        assert_eq!(r["cells"][0], "p");
        assert_eq!(r["cells"][1], "1/2");
        assert_eq!(r["cells"][2], "Running");
        assert_eq!(r["cells"][3], 3);
        assert_eq!(r["cells"][5], "<none>");
    }
}
