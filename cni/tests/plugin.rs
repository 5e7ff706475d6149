//! The `r3s-cni` binary as a runtime would call it: config on stdin, `CNI_*` in the environment,
//! run inside a simulated host namespace; ADD / CHECK / DEL / VERSION and spec error answers.
#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_r3s-cni");

/// Runs the plugin in `host`'s namespace; returns (exit success, stdout JSON or Null).
fn cni(host: &Netns, env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &host.name, BIN])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn r3s-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait r3s-cni");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    (out.status.success(), json)
}

#[test]
fn add_check_del_version_and_errors() {
    if !support::prerequisites(false) {
        return;
    }
    let host = Netns::new("h");
    let pod = Netns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"cniVersion":"1.0.0","name":"r3s","type":"r3s-cni","subnet":"10.42.7.0/24","mtu":1450,"dataDir":"{}"}}"#,
        dir.path().display()
    );
    let netns = pod.path.to_str().expect("utf-8 path").to_string();
    let env = |cmd: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "ctr-plugin"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    };

    // VERSION
    let (ok, v) = cni(&host, &[("CNI_COMMAND", "VERSION")], "");
    assert!(ok);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("1.0.0"))
    );

    // ADD
    let mut add = env("ADD");
    add.push(("CNI_NETNS", &netns));
    let (ok, r) = cni(&host, &add, &config);
    assert!(ok, "{r}");
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["ips"][0]["address"], "10.42.7.2/24");
    assert_eq!(r["ips"][0]["gateway"], "10.42.7.1");
    assert_eq!(r["ips"][0]["interface"], 2);
    assert_eq!(r["interfaces"][2]["name"], "eth0");
    assert_eq!(r["interfaces"][2]["sandbox"], netns.as_str());
    assert_eq!(r["interfaces"][0]["name"], "r3s0");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert!(r["dns"].is_object());
    let pod_mac = r["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert!(pod.ip(&["link", "show", "eth0"]).contains(&pod_mac));
    assert!(pod.ping("10.42.7.1"), "pod -> gateway");

    // CHECK passes
    let mut check = env("CHECK");
    check.push(("CNI_NETNS", &netns));
    let (ok, r) = cni(&host, &check, &config);
    assert!(ok, "{r}");

    // DEL (twice: idempotent), then CHECK reports an unknown container.
    for _ in 0..2 {
        let (ok, r) = cni(&host, &env("DEL"), &config);
        assert!(ok, "{r}");
    }
    assert!(!pod.ip_try(&["link", "show", "eth0"]).status.success());
    let (ok, r) = cni(&host, &check, &config);
    assert!(!ok);
    assert_eq!(r["code"], 3, "{r}");

    // Errors: bad config, missing environment, unknown command.
    let (ok, r) = cni(&host, &add, "{ not json");
    assert!(!ok);
    assert_eq!(r["code"], 6, "{r}");
    assert_eq!(r["cniVersion"], "1.0.0");
    assert!(r["msg"].is_string() && r["details"].is_string(), "{r}");
    let (ok, r) = cni(
        &host,
        &add,
        r#"{"cniVersion":"1.0.0","name":"r3s","type":"r3s-cni"}"#,
    );
    assert!(!ok);
    assert_eq!(r["code"], 7, "{r}");
    let (ok, r) = cni(&host, &env("ADD"), &config); // no CNI_NETNS
    assert!(!ok);
    assert_eq!(r["code"], 4, "{r}");
    let (ok, r) = cni(&host, &[("CNI_COMMAND", "FROB")], &config);
    assert!(!ok);
    assert_eq!(r["code"], 4, "{r}");
}
