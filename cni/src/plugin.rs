//! The CNI spec 1.0 plugin protocol over [`BridgeNetwork`]: parse the network configuration from
//! stdin and the `CNI_*` environment, run ADD / DEL / CHECK / VERSION, and produce the result or
//! error JSON. The `r3s-cni` binary is a thin shell around [`execute`]; the agent calls
//! [`BridgeNetwork`] directly with the same configuration.
//!
//! Configuration (plugin type `r3s-cni`; every key but `cniVersion`, `name` and `subnet` optional):
//! ```json
//! {"cniVersion":"1.0.0","name":"r3s","type":"r3s-cni","subnet":"10.42.3.0/24",
//!  "bridge":"r3s0","mtu":1450,"dataDir":"/var/lib/r3s/agent/cni/networks"}
//! ```
//! `subnet` may instead be given as `ipam.subnet` (as the bridge plugin's host-local IPAM takes it).
//!
//! Errors carry the spec's codes: 1 incompatible version, 4 invalid environment, 6 undecodable
//! config, 7 invalid config, 5 I/O (netlink, files) and 11 "try again later" is not used.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use r3s_config::exit::chain as error_chain;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bridge::DEFAULT_BRIDGE;
use crate::netns;
use crate::network::{BridgeNetwork, NetworkError};
use crate::vxlan::mac::format_mac;

/// The spec version results are written in.
pub const CNI_VERSION: &str = "1.0.0";
/// Versions whose configuration we accept (the result format of 0.3.x/0.4.0 is a subset of 1.0.0's).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Where leases are kept unless `dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/r3s/agent/cni/networks";
/// Default pod MTU: a 1500-byte underlay minus the VXLAN overhead.
pub const DEFAULT_MTU: u32 = 1450;

/// A CNI error: the spec's code, a message and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}: {details}")]
pub struct PluginError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl PluginError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> PluginError {
        PluginError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON the spec prescribes.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

impl From<NetworkError> for PluginError {
    fn from(e: NetworkError) -> PluginError {
        let details = error_chain(&e);
        match e {
            NetworkError::Ipam(crate::ipam::IpamError::InvalidName { .. }) => {
                PluginError::new(4, "invalid container id or interface name", details)
            }
            NetworkError::NoLease { .. } => PluginError::new(3, "container unknown", details),
            _ => PluginError::new(5, "pod network operation failed", details),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    cni_version: String,
    name: String,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    ipam: Option<RawIpam>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
}

/// A parsed network configuration.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub cni_version: String,
    pub network: BridgeNetwork,
}

/// Parses the network configuration from stdin.
pub fn parse_config(stdin: &[u8]) -> Result<PluginConfig, PluginError> {
    let raw: RawConfig = serde_json::from_slice(stdin).map_err(|e| {
        PluginError::new(6, "failed to decode network configuration", e.to_string())
    })?;
    if !SUPPORTED_VERSIONS.contains(&raw.cni_version.as_str()) {
        return Err(PluginError::new(
            1,
            "incompatible CNI version",
            format!(
                "config has {}, plugin supports {SUPPORTED_VERSIONS:?}",
                raw.cni_version
            ),
        ));
    }
    let subnet_text = raw
        .subnet
        .or_else(|| raw.ipam.as_ref().and_then(|i| i.subnet.clone()))
        .ok_or_else(|| {
            PluginError::new(7, "invalid network configuration", "missing \"subnet\"")
        })?;
    let subnet: Ipv4Net = subnet_text.parse().map_err(|e| {
        PluginError::new(
            7,
            "invalid network configuration",
            format!("subnet {subnet_text:?}: {e}"),
        )
    })?;
    if subnet.prefix_len() > 30 {
        return Err(PluginError::new(
            7,
            "invalid network configuration",
            format!("subnet {subnet} is too small"),
        ));
    }
    let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
    if !(576..=65535).contains(&mtu) {
        return Err(PluginError::new(
            7,
            "invalid network configuration",
            format!("mtu {mtu} out of range"),
        ));
    }
    let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    if bridge.is_empty() || bridge.len() > 15 || bridge.contains('/') {
        return Err(PluginError::new(
            7,
            "invalid network configuration",
            format!("bridge name {bridge:?}"),
        ));
    }
    let ipam_dir = raw
        .data_dir
        .or_else(|| raw.ipam.and_then(|i| i.data_dir))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    Ok(PluginConfig {
        cni_version: raw.cni_version,
        network: BridgeNetwork {
            name: raw.name,
            bridge,
            subnet: subnet.trunc(),
            mtu,
            ipam_dir,
        },
    })
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
}

impl CniEnv {
    /// Reads `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME` (`CNI_PATH` and
    /// `CNI_ARGS` are accepted but unused: this plugin delegates to no other plugin).
    pub fn from_env() -> CniEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        CniEnv {
            command: var("CNI_COMMAND").unwrap_or_default(),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
        }
    }

    fn require<'a>(&self, value: &'a Option<String>, name: &str) -> Result<&'a str, PluginError> {
        value.as_deref().ok_or_else(|| {
            PluginError::new(
                4,
                "invalid environment variables",
                format!("{name} is required for {}", self.command),
            )
        })
    }
}

/// The VERSION answer.
pub fn version_json() -> Value {
    json!({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// Runs one CNI command. Returns the JSON to print on stdout (`None` for DEL/CHECK, which print
/// nothing on success). Must be called within a tokio runtime, in the host's network namespace.
pub async fn execute(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, PluginError> {
    if env.command == "VERSION" {
        return Ok(Some(version_json()));
    }
    let cfg = parse_config(stdin)?;
    let h = netns::connect(None)
        .map_err(|e| PluginError::new(5, "opening a netlink socket", error_chain(&e)))?;
    let net = &cfg.network;
    match env.command.as_str() {
        "ADD" => {
            let id = env.require(&env.container_id, "CNI_CONTAINERID")?;
            let ns = env.require(&env.netns, "CNI_NETNS")?;
            let ifname = env.require(&env.ifname, "CNI_IFNAME")?;
            let link = net.add(&h, id, std::path::Path::new(ns), ifname).await?;
            let mac = |m: Option<[u8; 6]>| m.map(|m| format_mac(&m)).unwrap_or_default();
            let bridge_mac = crate::nl::link_by_name(&h, &net.bridge)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.mac);
            Ok(Some(add_result(
                &cfg.cni_version,
                &net.bridge,
                &mac(bridge_mac),
                &link.host_veth,
                &mac(link.host_mac),
                &link.ifname,
                &mac(link.mac),
                ns,
                link.address,
                link.gateway,
            )))
        }
        "DEL" => {
            let id = env.require(&env.container_id, "CNI_CONTAINERID")?;
            let ifname = env.require(&env.ifname, "CNI_IFNAME")?;
            net.del(&h, id, ifname).await?;
            Ok(None)
        }
        "CHECK" => {
            let id = env.require(&env.container_id, "CNI_CONTAINERID")?;
            let ns = env.require(&env.netns, "CNI_NETNS")?;
            let ifname = env.require(&env.ifname, "CNI_IFNAME")?;
            net.check(&h, id, std::path::Path::new(ns), ifname).await?;
            Ok(None)
        }
        other => Err(PluginError::new(
            4,
            "invalid environment variables",
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION"),
        )),
    }
}

/// The ADD result: bridge, host veth and pod interface; one IP on the pod interface (index 2);
/// the default route; empty DNS (cluster DNS is configured by the agent, not by CNI).
#[allow(clippy::too_many_arguments)]
fn add_result(
    version: &str,
    bridge: &str,
    bridge_mac: &str,
    host_veth: &str,
    host_mac: &str,
    ifname: &str,
    pod_mac: &str,
    sandbox: &str,
    address: Ipv4Net,
    gateway: Ipv4Addr,
) -> Value {
    let mut ip =
        json!({"address": address.to_string(), "gateway": gateway.to_string(), "interface": 2});
    if version != "1.0.0" {
        // Results before 1.0.0 name the IP version of every address.
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": bridge, "mac": bridge_mac},
            {"name": host_veth, "mac": host_mac},
            {"name": ifname, "mac": pod_mac, "sandbox": sandbox},
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": gateway.to_string()}],
        "dns": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal_configs() {
        let cfg = parse_config(
            br#"{"cniVersion":"1.0.0","name":"r3s","type":"r3s-cni","subnet":"10.42.3.0/24",
                "bridge":"br9","mtu":1400,"dataDir":"/tmp/x"}"#,
        )
        .unwrap();
        assert_eq!(cfg.network.bridge, "br9");
        assert_eq!(cfg.network.mtu, 1400);
        assert_eq!(cfg.network.subnet.to_string(), "10.42.3.0/24");
        let cfg = parse_config(
            br#"{"cniVersion":"0.4.0","name":"r3s","type":"r3s-cni","ipam":{"type":"host-local","subnet":"10.42.4.7/24"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.network.bridge, DEFAULT_BRIDGE);
        assert_eq!(cfg.network.mtu, DEFAULT_MTU);
        assert_eq!(cfg.network.subnet.to_string(), "10.42.4.0/24");
        assert_eq!(cfg.network.ipam_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn config_errors_carry_spec_codes() {
        let code = |s: &str| parse_config(s.as_bytes()).unwrap_err().code;
        assert_eq!(code("not json"), 6);
        assert_eq!(
            code(r#"{"cniVersion":"9.9.9","name":"r3s","subnet":"10.42.3.0/24"}"#),
            1
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"r3s"}"#), 7);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"r3s","subnet":"banana"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"r3s","subnet":"10.42.3.0/24","mtu":10}"#),
            7
        );
    }

    #[test]
    fn pre_1_0_results_name_the_ip_version() {
        let args = |v| {
            add_result(
                v,
                "r3s0",
                "",
                "veth",
                "",
                "eth0",
                "",
                "/run/netns/x",
                "10.42.3.2/24".parse().unwrap(),
                Ipv4Addr::new(10, 42, 3, 1),
            )
        };
        assert_eq!(args("0.4.0")["ips"][0]["version"], "4");
        assert!(args("1.0.0")["ips"][0].get("version").is_none());
    }

    #[test]
    fn error_json_shape() {
        let e = PluginError::new(7, "invalid network configuration", "missing subnet");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":7,"msg":"invalid network configuration","details":"missing subnet"})
        );
    }
}
