//! The node's Lease in `kube-node-lease`, renewed every [`RENEW_INTERVAL`]: the cheap heartbeat
//! the node lifecycle controller reads (kubelet's model; node status is written less often).
//! Every renewal is an update on the last seen resourceVersion; a conflict re-reads the Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{PostParams, ResourceExt};
use serde_json::json;

use super::AgentError;

pub const NAMESPACE: &str = "kube-node-lease";
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
pub const DURATION_SECONDS: i32 = 40;

fn micro_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Creates or renews the Lease once; `node_uid` makes the Node its owner.
pub async fn renew(api: &Api<Lease>, node: &str, node_uid: &str) -> Result<Lease, AgentError> {
    let err = |source| AgentError::Lease {
        node: node.to_owned(),
        source,
    };
    match api.get_opt(node).await.map_err(err)? {
        Some(mut lease) => {
            lease.spec = Some(
                serde_json::from_value(json!({
                    "holderIdentity": node,
                    "leaseDurationSeconds": DURATION_SECONDS,
                    "renewTime": micro_now(),
                }))
                .map_err(AgentError::Json)?,
            );
            let name = lease.name_any();
            api.replace(&name, &PostParams::default(), &lease)
                .await
                .map_err(err)
        }
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": node,
                    "namespace": NAMESPACE,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
                },
                "spec": {"holderIdentity": node, "leaseDurationSeconds": DURATION_SECONDS, "renewTime": micro_now()},
            }))
            .map_err(AgentError::Json)?;
            api.create(&PostParams::default(), &lease)
                .await
                .map_err(err)
        }
    }
}
