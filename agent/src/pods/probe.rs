//! Container probes (liveness, readiness, startup) with upstream's timing fields
//! (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold, failureThreshold).
//!
//! One prober task per probe of a running container instance reports *transitions* of its
//! result to the pod worker, which owns every decision (readiness in the status, restarting on
//! liveness or startup failure). `tcpSocket` and `httpGet` probes connect to the pod IP, as
//! kubelet does; a pod with a loopback-only network namespace has no IP reachable from the host,
//! so its probes connect to 127.0.0.1 from inside that namespace. `exec` probes run the command
//! in the container through libcontainer (exit 0 is success). `grpc` probes are refused when the
//! container is configured (see [`unsupported`]), never silently skipped.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Liveness,
    Readiness,
    Startup,
}

/// A probe's result changed.
#[derive(Debug, Clone)]
pub struct ProbeEvent {
    pub container_id: String,
    pub which: Which,
    pub ok: bool,
    pub message: String,
}

/// Where probes connect, and the container exec probes run in.
#[derive(Debug, Clone)]
pub struct Target {
    pub ip: IpAddr,
    /// Connect from inside this network namespace (loopback-only pods).
    pub netns: Option<PathBuf>,
    /// For exec probes: the runtime and container id.
    pub exec: Option<(crate::runtime::Runtime, String)>,
}

/// The first probe of `c` this agent cannot run, if any.
pub fn unsupported(c: &Container) -> Option<String> {
    for (name, p) in [
        ("liveness", &c.liveness_probe),
        ("readiness", &c.readiness_probe),
        ("startup", &c.startup_probe),
    ] {
        if p.as_ref().is_some_and(|p| p.grpc.is_some()) {
            return Some(format!(
                "{name} probe: grpc probes are not supported by r3s yet"
            ));
        }
    }
    None
}

fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("no container port named {name}")),
    }
}

fn connect(target: &Target, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr = SocketAddr::new(target.ip, port);
    let dial =
        move || TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial {addr}: {e}"));
    match &target.netns {
        None => dial(),
        Some(ns) => r3s_cni::netns::run_in(ns, dial).map_err(|e| e.to_string())?,
    }
}

/// Runs the probe once (blocking): Ok on success, Err with kubelet's kind of message.
pub fn run_once(c: &Container, p: &Probe, target: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &p.exec {
        let (runtime, id) = target
            .exec
            .as_ref()
            .ok_or_else(|| "no container to run the exec probe in".to_string())?;
        let args = e.command.clone().unwrap_or_default();
        if args.is_empty() {
            return Err("exec probe without a command".into());
        }
        return match runtime.exec_blocking(id, args, timeout) {
            Ok(Some(0)) => Ok(()),
            Ok(Some(code)) => Err(format!("command exited with {code}")),
            Ok(None) => Err(format!("command timed out after {}s", timeout.as_secs())),
            Err(e) => Err(e.to_string()),
        };
    }
    if let Some(t) = &p.tcp_socket {
        connect(target, port(c, &t.port)?, timeout)?;
        return Ok(());
    }
    if let Some(h) = &p.http_get {
        let port = port(c, &h.port)?;
        let mut s = connect(target, port, timeout)?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let host = h.host.clone().unwrap_or_else(|| target.ip.to_string());
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for hd in h.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad HTTP response {line:?}"))?;
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    Err("probe has no handler".into())
}

/// Runs one probe of one container instance until the task is aborted, reporting transitions.
/// Startup-gated probes wait on `started` before their first run.
pub async fn prober(
    container: Container,
    probe: Probe,
    which: Which,
    container_id: String,
    target: Target,
    mut started: tokio::sync::watch::Receiver<bool>,
    tx: mpsc::UnboundedSender<ProbeEvent>,
) {
    if which != Which::Startup {
        while !*started.borrow_and_update() {
            if started.changed().await.is_err() {
                return;
            }
        }
    }
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let success_needed = probe.success_threshold.unwrap_or(1).max(1);
    let failure_needed = probe.failure_threshold.unwrap_or(3).max(1);
    let (mut successes, mut failures) = (0, 0);
    let mut reported: Option<bool> = None;
    loop {
        let (c, p, t) = (container.clone(), probe.clone(), target.clone());
        let result = tokio::task::spawn_blocking(move || run_once(&c, &p, &t))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let message = match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                String::new()
            }
            Err(m) => {
                failures += 1;
                successes = 0;
                m
            }
        };
        let decided = if successes >= success_needed {
            Some(true)
        } else if failures >= failure_needed {
            Some(false)
        } else {
            None
        };
        if let Some(ok) = decided
            && reported != Some(ok)
        {
            reported = Some(ok);
            let ev = ProbeEvent {
                container_id: container_id.clone(),
                which,
                ok,
                message,
            };
            if tx.send(ev).is_err() {
                return;
            }
            // A successful startup probe is never run again.
            if which == Which::Startup && ok {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_http_against_a_local_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let status = if i == 1 {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        let c = Container {
            name: "c".into(),
            ports: Some(vec![
                serde_json::from_value(serde_json::json!({"name": "web", "containerPort": port}))
                    .unwrap(),
            ]),
            ..Default::default()
        };
        let target = Target {
            ip: "127.0.0.1".parse().unwrap(),
            netns: None,
            exec: None,
        };
        let http: Probe = serde_json::from_value(
            serde_json::json!({"httpGet": {"path": "/healthz", "port": "web"}}),
        )
        .unwrap();
        let err = run_once(&c, &http, &target).unwrap_err();
        assert!(err.contains("503"), "{err}");
        assert_eq!(run_once(&c, &http, &target), Ok(()));
        let tcp: Probe =
            serde_json::from_value(serde_json::json!({"tcpSocket": {"port": port}})).unwrap();
        assert_eq!(run_once(&c, &tcp, &target), Ok(()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tcp: Probe =
            serde_json::from_value(serde_json::json!({"tcpSocket": {"port": closed}})).unwrap();
        assert!(run_once(&c, &tcp, &target).is_err());
        let grpc: Probe =
            serde_json::from_value(serde_json::json!({"grpc": {"port": 9000}})).unwrap();
        let c2 = Container {
            readiness_probe: Some(grpc),
            ..c
        };
        assert!(unsupported(&c2).unwrap().contains("grpc"));
    }
}
