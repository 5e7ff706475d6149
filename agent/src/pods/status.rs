//! Pod status as kubelet writes it, computed from the worker's view of its containers: phase,
//! conditions (PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled),
//! containerStatuses and initContainerStatuses (state, lastState, restartCount, image, imageID,
//! containerID, started, ready), hostIP(s), podIP(s), startTime, qosClass.
//!
//! Pure functions over [`PodView`]; the worker writes the result through `pods/status` only when
//! it changed. Condition `lastTransitionTime`s are carried over from the previous status while
//! the condition's value stays the same.

use serde_json::{Value, json};

/// How a container instance ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error` or `OOMKilled`.
    pub reason: String,
    pub started_at: Option<String>,
    pub finished_at: String,
    pub container_id: Option<String>,
}

/// A container's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        container_id: String,
        started_at: String,
    },
    Terminated(Terminated),
}

/// One container as the status shows it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub name: String,
    /// The image as the pod names it, resolved to its canonical name once pulled.
    pub image: String,
    pub image_id: Option<String>,
    pub restart_count: u32,
    pub state: State,
    pub last: Option<Terminated>,
    /// Running, past its startup probe, and passing its readiness probe (if any).
    pub ready: bool,
    /// Running and past its startup probe (if any).
    pub started: bool,
}

/// The pod as the status shows it.
#[derive(Debug, Clone)]
pub struct PodView {
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    pub restart_policy: String,
    pub host_ip: String,
    pub pod_ip: Option<String>,
    pub start_time: String,
    pub qos_class: String,
    pub sandbox_ready: bool,
    /// Every init container has succeeded.
    pub initialized: bool,
    /// A message for the whole pod (sandbox failures).
    pub message: Option<String>,
}

/// The pod phase (kubelet's rules, without the unknown-state cases).
pub fn phase(v: &PodView) -> &'static str {
    if !v.initialized {
        let failed = v
            .init
            .iter()
            .any(|c| matches!(&c.state, State::Terminated(t) if t.exit_code != 0));
        return if failed && v.restart_policy == "Never" {
            "Failed"
        } else {
            "Pending"
        };
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &v.containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } if c.last.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match v.restart_policy.as_str() {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "finishedAt": t.finished_at,
    });
    if let Some(s) = &t.started_at {
        v["startedAt"] = json!(s);
    }
    if let Some(sig) = t.signal {
        v["signal"] = json!(sig);
    }
    if let Some(id) = &t.container_id {
        v["containerID"] = json!(format!("youki://{id}"));
    }
    v
}

fn container_json(c: &ContainerView, init: bool) -> Value {
    let (state, container_id) = match &c.state {
        State::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if let Some(m) = message {
                w["message"] = json!(m);
            }
            (
                json!({"waiting": w}),
                c.last.as_ref().and_then(|t| t.container_id.clone()),
            )
        }
        State::Running {
            container_id,
            started_at,
        } => (
            json!({"running": {"startedAt": started_at}}),
            Some(container_id.clone()),
        ),
        State::Terminated(t) => (
            json!({"terminated": terminated_json(t)}),
            t.container_id.clone(),
        ),
    };
    // A finished init container counts as ready.
    let ready = c.ready || (init && matches!(&c.state, State::Terminated(t) if t.exit_code == 0));
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id.clone().unwrap_or_default(),
        "restartCount": c.restart_count,
        "ready": ready,
        "started": c.started,
        "state": state,
        "lastState": c.last.as_ref().map(|t| json!({"terminated": terminated_json(t)})).unwrap_or(json!({})),
    });
    if let Some(id) = container_id {
        v["containerID"] = json!(format!("youki://{id}"));
    }
    v
}

fn condition(prev: &Value, typ: &str, ok: bool, reason: Option<&str>, now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let old = prev["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == typ));
    let since = match old {
        Some(o) if o["status"] == status => o["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut c =
        json!({"type": typ, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason.filter(|_| !ok) {
        c["reason"] = json!(r);
    }
    c
}

/// The full status object; `prev` is the status last written (for transition times).
pub fn status(v: &PodView, prev: &Value, now: &str) -> Value {
    let phase = phase(v);
    let containers_ready = v.initialized && v.containers.iter().all(|c| c.ready);
    let not_ready_reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let init_reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotInitialized"
    };
    let conditions = vec![
        condition(
            prev,
            "PodReadyToStartContainers",
            v.sandbox_ready,
            None,
            now,
        ),
        condition(
            prev,
            "Initialized",
            v.initialized || phase == "Succeeded",
            Some(init_reason),
            now,
        ),
        condition(prev, "Ready", containers_ready, Some(not_ready_reason), now),
        condition(
            prev,
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            now,
        ),
        condition(prev, "PodScheduled", true, None, now),
    ];
    let mut s = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": v.host_ip,
        "hostIPs": [{"ip": v.host_ip}],
        "startTime": v.start_time,
        "qosClass": v.qos_class,
        "containerStatuses": v.containers.iter().map(|c| container_json(c, false)).collect::<Vec<_>>(),
    });
    if !v.init.is_empty() {
        s["initContainerStatuses"] = json!(
            v.init
                .iter()
                .map(|c| container_json(c, true))
                .collect::<Vec<_>>()
        );
    }
    if let Some(ip) = &v.pod_ip {
        s["podIP"] = json!(ip);
        s["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(m) = &v.message {
        s["message"] = json!(m);
    }
    s
}

/// The QoS class of a pod's containers' resources (requests default to limits).
pub fn qos_class(pod: &k8s_openapi::api::core::v1::Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        if !limits.is_empty() || !requests.is_empty() {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = limits.get(r);
            let q = requests.get(r).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(state: State, last: Option<Terminated>) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "img".into(),
            image_id: None,
            restart_count: 0,
            ready: matches!(state, State::Running { .. }),
            started: matches!(state, State::Running { .. }),
            state,
            last,
        }
    }

    fn term(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            started_at: None,
            finished_at: "t".into(),
            container_id: Some("abc".into()),
        }
    }

    fn view(containers: Vec<ContainerView>, policy: &str) -> PodView {
        PodView {
            init: vec![],
            containers,
            restart_policy: policy.into(),
            host_ip: "10.0.0.1".into(),
            pod_ip: None,
            start_time: "t0".into(),
            qos_class: "BestEffort".into(),
            sandbox_ready: true,
            initialized: true,
            message: None,
        }
    }

    fn waiting(r: &str) -> State {
        State::Waiting {
            reason: r.into(),
            message: None,
        }
    }

    #[test]
    fn phases() {
        let running = State::Running {
            container_id: "x".into(),
            started_at: "t".into(),
        };
        let check = |cs: Vec<ContainerView>, policy: &str, want: &str| {
            assert_eq!(phase(&view(cs, policy)), want)
        };
        check(
            vec![c(waiting("ContainerCreating"), None)],
            "Always",
            "Pending",
        );
        check(vec![c(running.clone(), None)], "Always", "Running");
        check(
            vec![c(waiting("CrashLoopBackOff"), Some(term(1)))],
            "Always",
            "Running",
        );
        check(
            vec![c(State::Terminated(term(0)), None)],
            "Never",
            "Succeeded",
        );
        check(vec![c(State::Terminated(term(2)), None)], "Never", "Failed");
        check(
            vec![c(State::Terminated(term(0)), None), c(running, None)],
            "Never",
            "Running",
        );
        let mut v = view(vec![c(waiting("PodInitializing"), None)], "Never");
        v.initialized = false;
        v.init = vec![c(State::Terminated(term(1)), None)];
        assert_eq!(phase(&v), "Failed");
    }

    #[test]
    fn status_json_and_stable_transition_times() {
        let running = State::Running {
            container_id: "abc".into(),
            started_at: "t1".into(),
        };
        let v = view(vec![c(running, Some(term(3)))], "Always");
        let s1 = status(&v, &Value::Null, "now1");
        assert_eq!(s1["phase"], "Running");
        let cs = &s1["containerStatuses"][0];
        assert_eq!(cs["containerID"], "youki://abc");
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
        let s2 = status(&v, &s1, "now2");
        assert_eq!(s1, s2, "nothing changed, so nothing to write");
    }
}
