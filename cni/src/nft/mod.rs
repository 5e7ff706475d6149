//! nf_tables spoken directly over `NETLINK_NETFILTER`: no `nft` binary, no libnftnl, no iptables
//! (the Pi fleet's iptables-legacy-vs-nft trouble cannot reach r3s).
//!
//! - [`attr`]: attribute encoding (private).
//! - [`expr`]: rule expressions ([`Expr`]: payload/meta loads, bitwise, cmp, set and verdict-map
//!   lookups, numgen, immediate, verdicts incl. jump/goto, ct state, dnat, masquerade, reject,
//!   dynamic-set updates, counter) and [`expr::m`], shorthands for common matches.
//! - [`batch`]: [`Batch`], one transaction of table / chain / rule / set / element messages.
//! - [`conn`]: [`Conn`], the socket (in a chosen network namespace) that commits a batch and
//!   reports the kernel's verdict.
//!
//! Invariant: a committed [`Batch`] is one nf_tables transaction, so the kernel applies all of it
//! or none of it, and packets never see a half-written ruleset. Users (the masquerade table, the
//! service proxy) replace their whole table, or flush and refill it, within one batch.

mod attr;
pub mod batch;
pub mod conn;
pub mod expr;

pub use batch::{Batch, Element, Hook, SetSpec, hooks};
pub use conn::Conn;
pub use expr::{Expr, Verdict, concat_key, reg32};

/// `NFPROTO_IPV4`, the `ip` family.
pub const FAMILY_IP: u8 = 2;

/// nft's data type ids, for set keys (so `nft list` prints them readably).
pub mod types {
    pub const IPV4_ADDR: u32 = 7;
    pub const INET_PROTO: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    /// A concatenation of types, as nft encodes it (6 bits per component).
    pub const fn concat(parts: &[u32]) -> u32 {
        let mut v = 0;
        let mut i = 0;
        while i < parts.len() {
            v = (v << 6) | parts[i];
            i += 1;
        }
        v
    }
}

/// Errors talking to nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("netfilter netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("opening a netfilter socket in a network namespace: {0}")]
    Netns(#[source] crate::netns::NetnsError),
    #[error("nf_tables rejected {what} (message {message} of the batch): {source}")]
    Rejected {
        what: String,
        /// Index of the first failing message within the batch (1 = first after the framing).
        message: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("nf_tables did not answer {what}")]
    NoAnswer { what: String },
    #[error("malformed netlink answer from nf_tables")]
    Malformed,
}
