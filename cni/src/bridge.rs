//! The node's pod bridge (default `r3s0`): every pod's host-side veth is a port of it, and it holds
//! the podCIDR's gateway address (`x.x.x.1/24`), so it is the pods' default router.
//!
//! The bridge gets an explicit random MAC when created: a bridge without one takes the lowest MAC
//! of its ports, so it would change as pods come and go and leave the pods' ARP entries for the
//! gateway stale.
//!
//! Invariants after [`ensure`]: a link of kind bridge with the given name exists, carries the
//! gateway address, has the requested MTU and is up. An existing link of another kind with that
//! name is an error, never silently replaced. Calling it again changes nothing.

use ipnet::Ipv4Net;
use netlink_packet_route::link::InfoKind;
use rtnetlink::{Handle, LinkBridge};

use crate::nl::{self, Link, NlContext, NlError, ok_if_exists};
use crate::vxlan::mac::random_mac;

/// The bridge name r3s uses unless configured otherwise (k3s's flannel uses `cni0`).
pub const DEFAULT_BRIDGE: &str = "r3s0";

/// Creates or repairs the bridge `name` with `gateway` (e.g. `10.42.3.1/24`) and `mtu`.
pub async fn ensure(h: &Handle, name: &str, gateway: Ipv4Net, mtu: u32) -> Result<Link, NlError> {
    let link = match nl::link_by_name(h, name).await? {
        Some(link) => link,
        None => {
            ok_if_exists(
                h.link()
                    .add(
                        LinkBridge::new(name)
                            .mtu(mtu)
                            .address(random_mac().to_vec())
                            .build(),
                    )
                    .execute()
                    .await,
            )
            .op(|| format!("creating bridge {name}"))?;
            nl::require_link(h, name).await?
        }
    };
    if link.kind != Some(InfoKind::Bridge) {
        return Err(NlError::WrongKind {
            name: name.to_string(),
            want: "bridge",
        });
    }
    nl::ensure_mtu(h, &link, mtu).await?;
    nl::ensure_addr(h, &link, gateway.addr(), gateway.prefix_len()).await?;
    if !link.up {
        nl::set_up(h, &link).await?;
    }
    nl::require_link(h, name).await
}
