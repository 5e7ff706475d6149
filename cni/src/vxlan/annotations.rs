//! How a node tells the others about its VTEP: Node annotations in flannel's keys and format
//! (anchors.md §6, point 4), so tooling that knows k3s clusters reads r3s nodes the same way:
//!
//! | key (prefix `flannel.alpha.coreos.com/`) | value |
//! |---|---|
//! | `backend-type` | `vxlan` |
//! | `backend-data` | `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}` |
//! | `public-ip` | the node IP (the VTEP's underlay address) |
//! | `public-ip-overwrite` | optional; wins over `public-ip` when set (k3s `--node-external-ip`) |
//! | `kube-subnet-manager` | `true` (the podCIDR comes from `spec.podCIDR`) |
//!
//! [`for_vtep`] builds the annotations a node publishes; [`peer_from`] turns another node's
//! annotations and `spec.podCIDR` into a [`Peer`], or says precisely what is missing or wrong (a
//! node that has not published yet is simply not a peer yet).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::Vtep;
use super::mac::{format_mac, parse_mac};
use super::peers::Peer;

pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// Why a node's annotations do not describe a usable peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("node has no {key} annotation yet")]
    Missing { key: &'static str },
    #[error("node annotation {key}={value:?} is invalid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct BackendData {
    #[serde(rename = "VNI")]
    vni: u32,
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

/// The annotations a node publishes for its VTEP.
pub fn for_vtep(vtep: &Vtep, vni: u32) -> BTreeMap<String, String> {
    let data = serde_json::json!({"VNI": vni, "VtepMAC": format_mac(&vtep.mac)});
    BTreeMap::from([
        (BACKEND_TYPE.to_string(), "vxlan".to_string()),
        (BACKEND_DATA.to_string(), data.to_string()),
        (PUBLIC_IP.to_string(), vtep.node_ip.to_string()),
        (KUBE_SUBNET_MANAGER.to_string(), "true".to_string()),
    ])
}

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> AnnotationError {
    AnnotationError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Builds the peer for a node from its `spec.podCIDR` and annotations. `vni` is ours: a node on
/// another VNI cannot be reached through our device.
pub fn peer_from(
    pod_cidr: &str,
    annotations: &BTreeMap<String, String>,
    vni: u32,
) -> Result<Peer, AnnotationError> {
    let get = |key: &'static str| {
        annotations
            .get(key)
            .map(String::as_str)
            .ok_or(AnnotationError::Missing { key })
    };
    let pod_cidr: Ipv4Net = pod_cidr
        .parse()
        .map_err(|e| invalid("spec.podCIDR", pod_cidr, format!("{e}")))?;
    let backend = get(BACKEND_TYPE)?;
    if backend != "vxlan" {
        return Err(invalid(
            BACKEND_TYPE,
            backend,
            "only the vxlan backend is supported",
        ));
    }
    let raw = get(BACKEND_DATA)?;
    let data: BackendData =
        serde_json::from_str(raw).map_err(|e| invalid(BACKEND_DATA, raw, e.to_string()))?;
    if data.vni != vni {
        return Err(invalid(
            BACKEND_DATA,
            raw,
            format!("VNI {} is not ours ({vni})", data.vni),
        ));
    }
    let vtep_mac = parse_mac(&data.vtep_mac)
        .ok_or_else(|| invalid(BACKEND_DATA, raw, "VtepMAC is not a MAC address"))?;
    let (key, ip_text) = match annotations
        .get(PUBLIC_IP_OVERWRITE)
        .filter(|v| !v.is_empty())
    {
        Some(v) => (PUBLIC_IP_OVERWRITE, v.as_str()),
        None => (PUBLIC_IP, get(PUBLIC_IP)?),
    };
    let node_ip: Ipv4Addr = ip_text
        .parse()
        .map_err(|e| invalid(key, ip_text, format!("{e}")))?;
    Ok(Peer {
        pod_cidr: pod_cidr.trunc(),
        vtep_mac,
        node_ip,
    })
}

/// The VTEP MAC a node's annotations publish for `vni`, if any: what a restarting agent reuses
/// when its MAC file is gone, so the MAC its peers hold stays valid (flannel #1795).
pub fn published_mac(annotations: &BTreeMap<String, String>, vni: u32) -> Option<[u8; 6]> {
    let data: BackendData = serde_json::from_str(annotations.get(BACKEND_DATA)?).ok()?;
    (data.vni == vni).then_some(())?;
    parse_mac(&data.vtep_mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vtep() -> Vtep {
        Vtep {
            index: 7,
            mac: [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee],
            mtu: 1450,
            node_ip: Ipv4Addr::new(198, 51, 100, 4),
        }
    }

    #[test]
    fn published_annotations_roundtrip_into_a_peer() {
        let ann = for_vtep(&vtep(), 1);
        assert_eq!(ann[BACKEND_TYPE], "vxlan");
        assert_eq!(
            ann[BACKEND_DATA],
            r#"{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:ee"}"#
        );
        assert_eq!(ann[PUBLIC_IP], "198.51.100.4");
        assert_eq!(published_mac(&ann, 1), Some(vtep().mac));
        assert_eq!(
            published_mac(&ann, 2),
            None,
            "another VNI's MAC is not ours"
        );
        assert_eq!(published_mac(&BTreeMap::new(), 1), None);
        let peer = peer_from("10.42.4.0/24", &ann, 1).unwrap();
        assert_eq!(
            peer,
            Peer {
                pod_cidr: "10.42.4.0/24".parse().unwrap(),
                vtep_mac: vtep().mac,
                node_ip: Ipv4Addr::new(198, 51, 100, 4),
            }
        );
    }

    #[test]
    fn overwrite_wins_and_errors_name_the_key() {
        let mut ann = for_vtep(&vtep(), 1);
        ann.insert(PUBLIC_IP_OVERWRITE.into(), "203.0.113.9".into());
        assert_eq!(
            peer_from("10.42.4.0/24", &ann, 1).unwrap().node_ip,
            Ipv4Addr::new(203, 0, 113, 9)
        );

        let mut missing = for_vtep(&vtep(), 1);
        missing.remove(BACKEND_DATA);
        assert_eq!(
            peer_from("10.42.4.0/24", &missing, 1),
            Err(AnnotationError::Missing { key: BACKEND_DATA })
        );
        let err = peer_from("10.42.4.0/24", &for_vtep(&vtep(), 1), 2).unwrap_err();
        assert!(err.to_string().contains("VNI 1 is not ours"), "{err}");
        let mut bad = for_vtep(&vtep(), 1);
        bad.insert(BACKEND_DATA.into(), r#"{"VNI":1,"VtepMAC":"nope"}"#.into());
        assert!(
            matches!(peer_from("10.42.4.0/24", &bad, 1), Err(AnnotationError::Invalid { key, .. }) if key == BACKEND_DATA)
        );
        assert!(peer_from("not-a-cidr", &for_vtep(&vtep(), 1), 1).is_err());
    }
}
