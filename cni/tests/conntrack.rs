//! Conntrack flushing on the real kernel, in a network namespace: a UDP "Service" made with a
//! DNAT rule pins an ongoing flow to its first backend even after the rule points elsewhere;
//! deleting the entries answered by the old backend moves the flow to the new one, and leaves
//! other flows alone.
#![cfg(target_os = "linux")]

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use r3s_cni::conntrack;
use r3s_cni::netns;
use support::Netns;

fn dnat_to(ns: &Netns, backend: &str) {
    let rules = format!(
        "table ip r3st-ct {{\n chain out {{\n  type nat hook output priority -100;\n  udp dport 5353 dnat to {backend}\n }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(
        &file,
        format!("table ip r3st-ct {{}}\ndelete table ip r3st-ct\n{rules}"),
    )
    .expect("rules file");
    let out = ns.exec(&["nft", "-f", file.to_str().expect("path")]);
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Which of `receivers` gets the datagram `client` sends to 127.0.0.1:5353.
fn who_answers(client: &UdpSocket, receivers: &[&UdpSocket]) -> Option<usize> {
    client.send_to(b"ping", "127.0.0.1:5353").expect("send");
    let mut buf = [0u8; 16];
    for _ in 0..20 {
        for (i, r) in receivers.iter().enumerate() {
            if r.recv_from(&mut buf).is_ok() {
                return Some(i);
            }
        }
    }
    None
}

#[test]
fn udp_entries_of_a_removed_backend_are_deleted() {
    if !support::prerequisites_with_nft() {
        return;
    }
    let ns = Netns::new("ct");
    dnat_to(&ns, "127.0.0.2:5354");
    let path = ns.path.clone();
    netns::run_in(&path, || {
        let old = UdpSocket::bind("127.0.0.2:5354").expect("bind old");
        let new = UdpSocket::bind("127.0.0.4:5355").expect("bind new");
        let other = UdpSocket::bind("127.0.0.3:6000").expect("bind other");
        for s in [&old, &new, &other] {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
        }
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        let bystander = UdpSocket::bind("127.0.0.1:0").expect("bystander");
        bystander.send_to(b"x", "127.0.0.3:6000").expect("send");
        assert_eq!(who_answers(&client, &[&old, &new]), Some(0));

        // The "Service" now points at the new backend, but the flow stays pinned.
        dnat_to(&ns, "127.0.0.4:5355");
        assert_eq!(who_answers(&client, &[&old, &new]), Some(0));

        let entries = conntrack::dump().expect("dump");
        let has = |ip: [u8; 4], port: u16, entries: &[conntrack::Entry]| {
            entries
                .iter()
                .any(|e| e.proto == 17 && e.reply_src == Some((Ipv4Addr::from(ip), port)))
        };
        assert!(has([127, 0, 0, 2], 5354, &entries), "{entries:?}");
        assert!(has([127, 0, 0, 3], 6000, &entries), "{entries:?}");

        let gone: BTreeSet<(Ipv4Addr, u16)> = [(Ipv4Addr::new(127, 0, 0, 2), 5354)].into();
        let n = conntrack::delete_udp_replies_from(None, &gone).expect("delete");
        assert_eq!(n, 1);
        let entries = conntrack::dump().expect("dump");
        assert!(!has([127, 0, 0, 2], 5354, &entries), "{entries:?}");
        assert!(
            has([127, 0, 0, 3], 6000, &entries),
            "a bystander flow was deleted"
        );
        // Nothing left to delete is not an error.
        assert_eq!(
            conntrack::delete_udp_replies_from(None, &gone).expect("again"),
            0
        );

        // The same flow now follows the rule.
        assert_eq!(who_answers(&client, &[&old, &new]), Some(1));
    })
    .expect("in the namespace");
    // The namespace form opens its socket inside the namespace.
    let gone: BTreeSet<(Ipv4Addr, u16)> = [(Ipv4Addr::new(127, 0, 0, 4), 5355)].into();
    assert_eq!(
        conntrack::delete_udp_replies_from(Some(&path), &gone).expect("netns delete"),
        1
    );
}
