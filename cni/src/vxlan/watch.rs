//! Notices when someone deletes the VXLAN device, so the agent can run [`super::peers::sync`] at
//! once (which recreates it with the same MAC and reprograms every peer) instead of waiting for
//! its next periodic sync. flannel does the same with a netlink link watcher.
//!
//! The stream listens on the rtnetlink link multicast group of the calling thread's network
//! namespace and yields once per `RTM_DELLINK` for the named device. It never ends on its own.

use futures::{Stream, StreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::MulticastGroup;

use crate::netns::NetnsError;

/// Yields `()` each time the link named `device` is deleted. Call within a tokio runtime.
pub fn device_deletions(
    device: &str,
) -> Result<impl Stream<Item = ()> + Send + 'static, NetnsError> {
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
        .map_err(|source| NetnsError::Socket { path: None, source })?;
    tokio::spawn(conn);
    let device = device.to_string();
    Ok(messages.filter_map(move |(msg, _)| {
        let hit = match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == device)),
            _ => false,
        };
        futures::future::ready(hit.then_some(()))
    }))
}
