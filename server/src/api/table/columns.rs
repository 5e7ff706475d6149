//! The per-kind column sets, in upstream's order (the apiserver's printers), and their cells.
//! Each cell is a pure function of the object; missing fields render as upstream renders them
//! (`<none>`, `0`, empty).

use serde_json::{Value, json};

use super::{AGE, Column, col, int, int_wide, since};

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

pub const EVENT: &[Column] = &[
    col("Last Seen", 0, event_last_seen),
    col("Type", 0, |o| s(&o["type"])),
    col("Reason", 0, |o| s(&o["reason"])),
    col("Object", 0, |o| {
        let io = &o["involvedObject"];
        json!(format!(
            "{}/{}",
            io["kind"].as_str().unwrap_or("").to_lowercase(),
            io["name"].as_str().unwrap_or("")
        ))
    }),
    col("Subobject", 1, |o| s(&o["involvedObject"]["fieldPath"])),
    col("Source", 1, |o| {
        let src = &o["source"];
        let component = src["component"]
            .as_str()
            .or(o["reportingComponent"].as_str())
            .unwrap_or("");
        match src["host"].as_str() {
            Some(host) if !host.is_empty() => json!(format!("{component}, {host}")),
            _ => json!(component),
        }
    }),
    col("Message", 0, |o| s(&o["message"])),
    col("First Seen", 1, |o| since(&o["firstTimestamp"])),
    int_wide("Count", |o| json!(o["count"].as_i64().unwrap_or(1))),
    col("Name", 1, |o| s(&o["metadata"]["name"])),
];
pub const ENDPOINTS: &[Column] = &[col("Endpoints", 0, endpoints), AGE];
pub const DAEMONSET: &[Column] = &[
    int("Desired", |o| {
        json!(n(&o["status"]["desiredNumberScheduled"]))
    }),
    int("Current", |o| {
        json!(n(&o["status"]["currentNumberScheduled"]))
    }),
    int("Ready", |o| json!(n(&o["status"]["numberReady"]))),
    int("Up-to-date", |o| {
        json!(n(&o["status"]["updatedNumberScheduled"]))
    }),
    int("Available", |o| json!(n(&o["status"]["numberAvailable"]))),
    col("Node Selector", 0, |o| {
        labels_text(&o["spec"]["template"]["spec"]["nodeSelector"])
    }),
    AGE,
    col("Containers", 1, |o| template_containers(o, "name")),
    col("Images", 1, |o| template_containers(o, "image")),
    col("Selector", 1, selector),
];
pub const STATEFULSET: &[Column] = &[
    col("Ready", 0, |o| {
        json!(format!(
            "{}/{}",
            n(&o["status"]["readyReplicas"]),
            n(&o["spec"]["replicas"])
        ))
    }),
    AGE,
    col("Containers", 1, |o| template_containers(o, "name")),
    col("Images", 1, |o| template_containers(o, "image")),
];
pub const CONTROLLER_REVISION: &[Column] = &[
    col("Controller", 0, controller_revision_owner),
    int("Revision", |o| json!(n(&o["revision"]))),
    AGE,
];
pub const JOB: &[Column] = &[
    col("Status", 0, job_status),
    col("Completions", 0, job_completions),
    col("Duration", 0, job_duration),
    AGE,
    col("Containers", 1, |o| template_containers(o, "name")),
    col("Images", 1, |o| template_containers(o, "image")),
    col("Selector", 1, |o| selector_text(&o["spec"]["selector"])),
];
pub const CRONJOB: &[Column] = &[
    col("Schedule", 0, |o| s(&o["spec"]["schedule"])),
    col("Timezone", 0, |o| or_none(&o["spec"]["timeZone"])),
    col("Suspend", 0, |o| {
        json!(if o["spec"]["suspend"] == json!(true) {
            "True"
        } else {
            "False"
        })
    }),
    int("Active", |o| len(&o["status"]["active"])),
    col(
        "Last Schedule",
        0,
        |o| match o["status"]["lastScheduleTime"] {
            Value::String(_) => since(&o["status"]["lastScheduleTime"]),
            _ => json!("<none>"),
        },
    ),
    AGE,
    col("Containers", 1, |o| job_template_containers(o, "name")),
    col("Images", 1, |o| job_template_containers(o, "image")),
    col("Selector", 1, |o| {
        selector_text(&o["spec"]["jobTemplate"]["spec"]["selector"])
    }),
];
pub const ENDPOINT_SLICE: &[Column] = &[
    col("AddressType", 0, |o| s(&o["addressType"])),
    col("Ports", 0, endpoint_slice_ports),
    col("Endpoints", 0, endpoint_slice_endpoints),
    AGE,
];
pub const POD_DISRUPTION_BUDGET: &[Column] = &[
    col("Min Available", 0, |o| or_na(&o["spec"]["minAvailable"])),
    col("Max Unavailable", 0, |o| {
        or_na(&o["spec"]["maxUnavailable"])
    }),
    int("Allowed Disruptions", |o| {
        json!(n(&o["status"]["disruptionsAllowed"]))
    }),
    AGE,
];
pub const LEASE: &[Column] = &[col("Holder", 0, |o| s(&o["spec"]["holderIdentity"])), AGE];

pub const INGRESS: &[Column] = &[
    col("Class", 0, |o| or_none(&o["spec"]["ingressClassName"])),
    col("Hosts", 0, ingress_hosts),
    col("Address", 0, |o| {
        let list: Vec<String> = o["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["ip"].as_str().or(e["hostname"].as_str()))
            .map(str::to_owned)
            .collect();
        json!(list.join(","))
    }),
    col("Ports", 0, |o| {
        let tls = o["spec"]["tls"].as_array().is_some_and(|t| !t.is_empty());
        json!(if tls { "80, 443" } else { "80" })
    }),
    AGE,
];
pub const INGRESS_CLASS: &[Column] = &[
    col("Controller", 0, |o| s(&o["spec"]["controller"])),
    col("Parameters", 0, |o| {
        let p = &o["spec"]["parameters"];
        if p.is_null() {
            return json!("<none>");
        }
        let kind = p["kind"].as_str().unwrap_or("");
        let kind = match p["apiGroup"].as_str() {
            Some(group) if !group.is_empty() => format!("{kind}.{group}"),
            _ => kind.to_string(),
        };
        json!(format!("{kind}/{}", p["name"].as_str().unwrap_or("")))
    }),
    AGE,
];
pub const NETWORK_POLICY: &[Column] = &[
    col("Pod-Selector", 0, |o| {
        selector_text(&o["spec"]["podSelector"])
    }),
    AGE,
];

pub const ROLE: &[Column] = &[col("Created At", 0, |o| {
    s(&o["metadata"]["creationTimestamp"])
})];
/// Upstream prints CRDs as roles: the creation time, not an age.
pub const CUSTOM_RESOURCE_DEFINITION: &[Column] = ROLE;
pub const ROLE_BINDING: &[Column] = &[
    col("Role", 0, |o| {
        let r = &o["roleRef"];
        json!(format!(
            "{}/{}",
            r["kind"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or("")
        ))
    }),
    AGE,
    col("Users", 1, |o| subjects(o, "User")),
    col("Groups", 1, |o| subjects(o, "Group")),
    col("ServiceAccounts", 1, |o| subjects(o, "ServiceAccount")),
];

fn subjects(o: &Value, kind: &str) -> Value {
    let names: Vec<String> = o["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == json!(kind))
        .map(|s| match s["namespace"].as_str() {
            Some(ns) if kind == "ServiceAccount" => {
                format!("{ns}/{}", s["name"].as_str().unwrap_or(""))
            }
            _ => s["name"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    json!(names.join(", "))
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

fn event_last_seen(o: &Value) -> Value {
    let last = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .map(|k| &o[*k])
        .find(|v| v.is_string())
        .unwrap_or(&o["metadata"]["creationTimestamp"]);
    since(last)
}

fn endpoints(o: &Value) -> Value {
    let mut list = Vec::new();
    for subset in o["subsets"].as_array().into_iter().flatten() {
        for addr in subset["addresses"].as_array().into_iter().flatten() {
            let ip = addr["ip"].as_str().unwrap_or("");
            match subset["ports"].as_array().filter(|p| !p.is_empty()) {
                Some(ports) => {
                    for port in ports {
                        list.push(format!("{ip}:{}", n(&port["port"])));
                    }
                }
                None => list.push(ip.to_string()),
            }
        }
    }
    if list.is_empty() {
        return json!("<none>");
    }
    let shown = list.len().min(3);
    let mut text = list[..shown].join(",");
    if list.len() > shown {
        text.push_str(&format!(" + {} more...", list.len() - shown));
    }
    json!(text)
}

/// A number or percentage (`IntOrString`), `N/A` when unset.
fn or_na(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.to_string()),
        Value::String(text) => json!(text),
        _ => json!("N/A"),
    }
}

/// `kind.group/name` of the controlling owner (`statefulset.apps/web`), `<none>` without one.
fn controller_revision_owner(o: &Value) -> Value {
    let owners = o["metadata"]["ownerReferences"].as_array();
    let owner = owners.and_then(|refs| refs.iter().find(|r| r["controller"] == json!(true)));
    match owner {
        Some(r) => {
            let kind = r["kind"].as_str().unwrap_or("").to_lowercase();
            let api_version = r["apiVersion"].as_str().unwrap_or("");
            let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
            let name = r["name"].as_str().unwrap_or("");
            if group.is_empty() {
                json!(format!("{kind}/{name}"))
            } else {
                json!(format!("{kind}.{group}/{name}"))
            }
        }
        None => json!("<none>"),
    }
}

fn has_condition(o: &Value, kind: &str) -> bool {
    o["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == json!(kind) && c["status"] == json!("True"))
    })
}

fn job_status(o: &Value) -> Value {
    let status = if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    json!(status)
}

fn job_completions(o: &Value) -> Value {
    let succeeded = n(&o["status"]["succeeded"]);
    match o["spec"]["completions"].as_i64() {
        Some(c) => json!(format!("{succeeded}/{c}")),
        None => match o["spec"]["parallelism"].as_i64() {
            Some(p) if p > 1 => json!(format!("{succeeded}/1 of {p}")),
            _ => json!(format!("{succeeded}/1")),
        },
    }
}

fn job_duration(o: &Value) -> Value {
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (
        time(&o["status"]["startTime"]),
        time(&o["status"]["completionTime"]),
    ) {
        (None, _) => json!(""),
        (Some(_), None) => since(&o["status"]["startTime"]),
        (Some(start), Some(end)) => json!(super::human_duration((end - start).num_seconds())),
    }
}

fn job_template_containers(o: &Value, field: &str) -> Value {
    let template = json!({"spec": o["spec"]["jobTemplate"]["spec"].clone()});
    template_containers(&template, field)
}

/// A `LabelSelector` as kubectl prints it (`a=b,c in (d)`), `<none>` when empty.
fn selector_text(sel: &Value) -> Value {
    let text = crate::api::scale::selector_string(sel);
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text)
    }
}

/// An Ingress's rule hosts (`*` for a rule without one), abbreviated as kubectl does.
fn ingress_hosts(o: &Value) -> Value {
    let hosts: Vec<String> = o["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| match r["host"].as_str() {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => "*".to_string(),
        })
        .collect();
    abbreviated(&hosts, "*")
}

/// Up to three entries and ` + N more...`, as kubectl abbreviates lists.
fn abbreviated(list: &[String], empty: &str) -> Value {
    if list.is_empty() {
        return json!(empty);
    }
    let shown = list.len().min(3);
    let mut text = list[..shown].join(",");
    if list.len() > shown {
        text.push_str(&format!(" + {} more...", list.len() - shown));
    }
    json!(text)
}

fn endpoint_slice_ports(o: &Value) -> Value {
    let ports: Vec<String> = o["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["port"].as_i64() {
            Some(port) => port.to_string(),
            None => "<unset>".to_string(),
        })
        .collect();
    abbreviated(&ports, "<unset>")
}

fn endpoint_slice_endpoints(o: &Value) -> Value {
    let addresses: Vec<String> = o["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    abbreviated(&addresses, "<none>")
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

/// A string field, or `def` when absent (upstream prints the defaulted value).
fn or_default(v: &Value, def: &str) -> Value {
    json!(v.as_str().filter(|t| !t.is_empty()).unwrap_or(def))
}

/// Access modes as upstream abbreviates them (`RWO,ROX`).
fn access_modes(v: &Value) -> Value {
    let modes: Vec<&str> = v
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect()
        })
        .unwrap_or_default();
    json!(modes.join(","))
}

pub const PRIORITY_CLASS: &[Column] = &[
    int("Value", |o| json!(n(&o["value"]))),
    col("Global-Default", 0, |o| {
        json!(o["globalDefault"].as_bool().unwrap_or(false))
    }),
    AGE,
    col("PreemptionPolicy", 0, |o| s(&o["preemptionPolicy"])),
];
pub const STORAGE_CLASS: &[Column] = &[
    col("Provisioner", 0, |o| s(&o["provisioner"])),
    col("ReclaimPolicy", 0, |o| {
        or_default(&o["reclaimPolicy"], "Delete")
    }),
    col("VolumeBindingMode", 0, |o| {
        or_default(&o["volumeBindingMode"], "Immediate")
    }),
    col("AllowVolumeExpansion", 0, |o| {
        json!(
            o["allowVolumeExpansion"]
                .as_bool()
                .unwrap_or(false)
                .to_string()
        )
    }),
    AGE,
];
pub const PERSISTENT_VOLUME: &[Column] = &[
    col("Capacity", 0, |o| s(&o["spec"]["capacity"]["storage"])),
    col("Access Modes", 0, |o| {
        access_modes(&o["spec"]["accessModes"])
    }),
    col("Reclaim Policy", 0, |o| {
        or_default(&o["spec"]["persistentVolumeReclaimPolicy"], "Retain")
    }),
    col("Status", 0, |o| s(&o["status"]["phase"])),
    col("Claim", 0, |o| {
        let claim = &o["spec"]["claimRef"];
        match claim["name"].as_str() {
            Some(name) => json!(format!(
                "{}/{name}",
                claim["namespace"].as_str().unwrap_or("")
            )),
            None => json!(""),
        }
    }),
    col("StorageClass", 0, |o| s(&o["spec"]["storageClassName"])),
    col("VolumeAttributesClass", 0, |o| {
        or_default(&o["spec"]["volumeAttributesClassName"], "<unset>")
    }),
    col("Reason", 0, |o| s(&o["status"]["reason"])),
    AGE,
    col("VolumeMode", 1, |o| {
        or_default(&o["spec"]["volumeMode"], "Filesystem")
    }),
];
pub const PERSISTENT_VOLUME_CLAIM: &[Column] = &[
    col("Status", 0, |o| s(&o["status"]["phase"])),
    col("Volume", 0, |o| s(&o["spec"]["volumeName"])),
    col("Capacity", 0, |o| s(&o["status"]["capacity"]["storage"])),
    col("Access Modes", 0, |o| {
        access_modes(&o["status"]["accessModes"])
    }),
    col("StorageClass", 0, |o| s(&o["spec"]["storageClassName"])),
    col("VolumeAttributesClass", 0, |o| {
        or_default(&o["spec"]["volumeAttributesClassName"], "<unset>")
    }),
    AGE,
    col("VolumeMode", 1, |o| {
        or_default(&o["spec"]["volumeMode"], "Filesystem")
    }),
];
pub const RESOURCE_QUOTA: &[Column] = &[
    AGE,
    col("Request", 0, |o| quota_usage(o, false)),
    col("Limit", 0, |o| quota_usage(o, true)),
];
pub const LIMIT_RANGE: &[Column] = &[col("Created At", 0, |o| {
    s(&o["metadata"]["creationTimestamp"])
})];

/// `resource: used/hard` pairs of a ResourceQuota, limits (`limits.*`) or the rest, as upstream.
fn quota_usage(o: &Value, limits: bool) -> Value {
    let hard = o["status"]["hard"]
        .as_object()
        .or_else(|| o["spec"]["hard"].as_object());
    let Some(hard) = hard else {
        return json!("");
    };
    let parts: Vec<String> = hard
        .iter()
        .filter(|(k, _)| k.starts_with("limits.") == limits)
        .map(|(k, v)| {
            let used = o["status"]["used"][k.as_str()].as_str().unwrap_or("0");
            format!("{k}: {used}/{}", v.as_str().unwrap_or(""))
        })
        .collect();
    json!(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::{IncludeObject, row};
    use super::*;

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

    #[test]
    fn event_and_endpoints_rows() {
        let ev = json!({"metadata":{"name":"web.1"},"type":"Normal","reason":"Scheduled",
            "involvedObject":{"kind":"Pod","name":"web"},"message":"assigned","count":2,
            "source":{"component":"default-scheduler"}});
        let r = row(EVENT, &ev, IncludeObject::None);
        let cells: Vec<&Value> = r["cells"].as_array().expect("cells").iter().collect();
        assert_eq!(cells[2], "Normal");
        assert_eq!(cells[3], "Scheduled");
        assert_eq!(cells[4], "pod/web");
        assert_eq!(cells[6], "default-scheduler");
        assert_eq!(cells[7], "assigned");
        let ep = json!({"metadata":{"name":"svc"},"subsets":[{"addresses":[
            {"ip":"10.42.0.5"},{"ip":"10.42.0.6"},{"ip":"10.42.1.2"},{"ip":"10.42.1.3"}],
            "ports":[{"port":80}]}]});
        assert_eq!(
            row(ENDPOINTS, &ep, IncludeObject::None)["cells"][1],
            "10.42.0.5:80,10.42.0.6:80,10.42.1.2:80 + 1 more..."
        );
    }
}
