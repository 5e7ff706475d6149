//! The nf_tables builders against the real kernel: every expression kind, named sets, dynamic
//! sets and verdict maps are accepted in one transaction inside a fresh network namespace and
//! read back by `nft` (Debian `nftables`, used only to inspect); a batch the kernel rejects
//! leaves the previous table exactly as it was (atomicity); deleting twice succeeds.
#![cfg(target_os = "linux")]

mod support;

use r3s_cni::nft::expr::{Base, CmpOp, MetaKey, Reject, ct_state, m};
use r3s_cni::nft::{
    Conn, Element, Expr, FAMILY_IP, Hook, NftError, SetSpec, Verdict, concat_key, hooks, reg32,
    types,
};
use support::Netns;

const T: &str = "r3st-nft";

fn list(ns: &Netns) -> Option<String> {
    let out = support::run(&[
        "ip", "netns", "exec", &ns.name, "nft", "list", "table", "ip", T,
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn every_expression(conn: &mut Conn) -> Result<(), NftError> {
    let mut b = conn.batch(FAMILY_IP);
    b.reset_table(T);
    b.add_table(T);
    let vmap = SetSpec {
        name: "vmap".into(),
        key_type: types::concat(&[types::IPV4_ADDR, types::INET_PROTO, types::INET_SERVICE]),
        key_len: 12,
        verdict_map: true,
        dynamic_timeout_ms: None,
    };
    let sticky = SetSpec {
        name: "sticky".into(),
        key_type: types::IPV4_ADDR,
        key_len: 4,
        verdict_map: false,
        dynamic_timeout_ms: Some(60_000),
    };
    b.add_set(T, &vmap);
    b.add_set(T, &sticky);
    let nat = Hook {
        kind: "nat",
        hooknum: hooks::PREROUTING,
        priority: hooks::PRI_DSTNAT,
    };
    let filter = Hook {
        kind: "filter",
        hooknum: hooks::FORWARD,
        priority: hooks::PRI_FILTER,
    };
    b.add_chain(T, "pre", Some(nat));
    b.add_chain(T, "fwd", Some(filter));
    b.add_chain(T, "target", None);
    b.add_chain(T, "rej", None);
    let mut r = m::daddr_proto_dport();
    r.push(Expr::Lookup {
        set: "vmap".into(),
        sreg: reg32(0),
        verdict_map: true,
        invert: false,
    });
    b.add_rule(T, "pre", &r);
    let mut r = m::ip_in(12, [10, 42, 0, 0], 16, false);
    r.push(Expr::Counter);
    r.extend(m::set_mark_bit(0x4000));
    b.add_rule(T, "pre", &r);
    b.add_rule(
        T,
        "pre",
        &[
            Expr::Numgen {
                dreg: reg32(0),
                modulus: 3,
                random: true,
            },
            Expr::Cmp {
                sreg: reg32(0),
                op: CmpOp::Eq,
                data: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Verdict(Verdict::Jump("target".into())),
        ],
    );
    let mut r = vec![Expr::Payload {
        base: Base::Network,
        offset: 12,
        len: 4,
        dreg: reg32(0),
    }];
    r.push(Expr::Lookup {
        set: "sticky".into(),
        sreg: reg32(0),
        verdict_map: false,
        invert: false,
    });
    r.push(Expr::Verdict(Verdict::Goto("target".into())));
    b.add_rule(T, "pre", &r);
    b.add_rule(
        T,
        "target",
        &[
            Expr::Payload {
                base: Base::Network,
                offset: 12,
                len: 4,
                dreg: reg32(0),
            },
            Expr::DynsetUpdate {
                set: "sticky".into(),
                sreg: reg32(0),
                timeout_ms: 60_000,
            },
        ],
    );
    let mut r = m::l4proto(6);
    r.extend(m::dnat([10, 42, 0, 7], 8080));
    b.add_rule(T, "target", &r);
    let mut r = m::ct_state_any(ct_state::NEW);
    r.extend(m::mark_bit(0x4000, true));
    r.push(Expr::Meta {
        key: MetaKey::Mark,
        dreg: reg32(1),
    });
    r.push(Expr::Verdict(Verdict::Goto("rej".into())));
    b.add_rule(T, "fwd", &r);
    b.add_rule(T, "rej", &[Expr::Reject(Reject::TcpReset)]);
    b.add_rule(T, "rej", &[Expr::Reject(Reject::IcmpUnreach(3))]);
    b.add_rule(T, "rej", &[Expr::Verdict(Verdict::Accept)]);
    b.add_rule(T, "rej", &[Expr::Verdict(Verdict::Drop)]);
    b.add_rule(T, "target", &[Expr::Verdict(Verdict::Return)]);
    let key = concat_key(&[&[10, 43, 0, 10], &[6], &80u16.to_be_bytes()]);
    b.add_elements(
        T,
        "vmap",
        &[Element {
            key,
            verdict: Some(Verdict::Goto("target".into())),
        }],
    );
    conn.commit(b, "the test table")
}

#[test]
fn kernel_accepts_every_expression_and_batches_are_atomic() {
    if !support::prerequisites_with_nft() {
        return;
    }
    let ns = Netns::new("nft");
    let mut conn = Conn::open_in(Some(&ns.path)).unwrap();
    every_expression(&mut conn).unwrap();
    let listing = list(&ns).expect("table listed");
    for want in [
        "10.43.0.10 . tcp . 80 : goto target",
        "type ipv4_addr . inet_proto . inet_service : verdict",
        "flags dynamic,timeout",
        "ip daddr . meta l4proto . th dport vmap @vmap",
        "ip saddr != 10.42.0.0/16 counter packets 0 bytes 0 meta mark set meta mark | 0x00004000",
        "numgen random mod 3 0 jump target",
        "ip saddr @sticky goto target",
        "update @sticky { ip saddr timeout 1m }",
        "meta l4proto tcp dnat to 10.42.0.7:8080",
        "ct state new meta mark & 0x00004000 != 0x00000000",
        "reject with tcp reset",
        "type nat hook prerouting priority dstnat",
    ] {
        assert!(listing.contains(want), "missing {want:?} in\n{listing}");
    }

    // A batch the kernel refuses (a jump to a chain that does not exist) changes nothing,
    // not even the table delete it starts with.
    let mut b = conn.batch(FAMILY_IP);
    b.reset_table(T);
    b.add_table(T);
    b.add_chain(T, "c", None);
    b.add_rule(T, "c", &[Expr::Verdict(Verdict::Jump("missing".into()))]);
    let err = conn.commit(b, "a broken table").unwrap_err();
    assert!(
        matches!(err, NftError::Rejected { message: 5, .. }),
        "{err}"
    );
    assert_eq!(list(&ns).as_deref(), Some(listing.as_str()));

    // The same socket keeps working after a failure; deleting is idempotent.
    for _ in 0..2 {
        let mut b = conn.batch(FAMILY_IP);
        b.reset_table(T);
        conn.commit(b, "deleting the test table").unwrap();
    }
    assert!(list(&ns).is_none());
}
