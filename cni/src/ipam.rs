//! Host-local IPAM: hands out pod addresses from the node's podCIDR and keeps every lease on disk.
//!
//! Layout (the host-local CNI plugin's, so an operator can read it with `ls`/`cat`):
//! `<dir>/<network>/<ip>` is one file per allocated address whose content is `<container id>\n<ifname>`;
//! `<dir>/<network>/last_reserved_ip.0` remembers the last address handed out so the next allocation
//! starts after it (a just-released address is not immediately reused, which keeps stale conntrack
//! entries and ARP caches of peers from pointing at a new pod); `<dir>/<network>/lock` is `flock`ed
//! for the duration of every operation; `<dir>/<network>/released` lists the last
//! [`RELEASED_KEPT`] owners released with the address each had, so that the same owner coming
//! back (a pod whose sandbox is rebuilt after an agent restart: the owner is the pod UID) gets its
//! old address again if it is still free, as a pod keeps its IP across kubelet restarts.
//!
//! Invariants: the network address, the gateway (`.1`, the bridge's address) and the broadcast
//! address are never allocated; an address file is created with `create_new` (O_EXCL), so even
//! without the lock two processes can never both own one address; an (container id, ifname) owner
//! holds at most one address, and allocating again for the same owner returns the same address
//! (CNI ADD is retried by runtimes); releasing an owner that holds nothing is not an error.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

const LAST_RESERVED: &str = "last_reserved_ip.0";
const LOCK: &str = "lock";
const RELEASED: &str = "released";
/// How many released (owner, address) pairs are remembered.
pub const RELEASED_KEPT: usize = 256;

/// Errors of the IPAM store.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(
        "invalid {what} {value:?}: must be non-empty, printable, without '/' and not '.' or '..'"
    )]
    InvalidName { what: &'static str, value: String },
    #[error("subnet {subnet} is too small to hold a gateway and pods (need at least a /30)")]
    SubnetTooSmall { subnet: Ipv4Net },
    #[error("no free address left in {subnet} for network {network} ({used} allocated)")]
    Exhausted {
        network: String,
        subnet: Ipv4Net,
        used: usize,
    },
    #[error("IPAM store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locking IPAM store {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Who holds an address: the CNI (container id, interface name) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    fn encode(&self) -> String {
        format!("{}\n{}", self.container_id, self.ifname)
    }

    fn decode(text: &str) -> Option<Owner> {
        // host-local writes "\r\n"; accept both so a store written by it can be read.
        let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
        let container_id = lines.next()?.trim().to_string();
        let ifname = lines.next().unwrap_or("").trim().to_string();
        Some(Owner {
            container_id,
            ifname,
        })
    }
}

/// The on-disk allocator for one network on one node.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    network: String,
    subnet: Ipv4Net,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Rejects names that could escape the store directory or break the file format.
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), IpamError> {
    let bad = value.is_empty()
        || value == "."
        || value == ".."
        || value.contains('/')
        || value.chars().any(|c| c.is_control());
    if bad {
        return Err(IpamError::InvalidName {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

impl Ipam {
    /// Opens (creating if needed) the store `<data_dir>/<network>` for `subnet`.
    pub fn open(data_dir: &Path, network: &str, subnet: Ipv4Net) -> Result<Ipam, IpamError> {
        check_name("network name", network)?;
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Ipam {
            dir,
            network: network.to_string(),
            subnet: subnet.trunc(),
        })
    }

    /// The subnet addresses come from.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway every pod routes through: the first host address (`.1`), held by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.subnet)
    }

    fn lock(&self) -> Result<Flock<File>, IpamError> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| IpamError::Lock { path, source })
    }

    /// Returns the address of `owner`, allocating a free one if it holds none.
    pub fn allocate(&self, owner: &Owner) -> Result<Ipv4Addr, IpamError> {
        check_name("container id", &owner.container_id)?;
        check_name("interface name", &owner.ifname)?;
        let _lock = self.lock()?;
        let leases = self.read_leases()?;
        if let Some((ip, _)) = leases.iter().find(|(_, o)| o == owner) {
            return Ok(*ip);
        }
        // The owner's previous address first, if nobody took it meanwhile.
        let mut released = self.read_released();
        if let Some(i) = released.iter().position(|(o, _)| o == owner) {
            let (_, ip) = released.remove(i);
            self.write_released(&released)?;
            if self.subnet.contains(&ip) && ip != self.gateway() && self.pool().any(|p| p == ip) {
                let path = self.dir.join(ip.to_string());
                match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut file) => {
                        file.write_all(owner.encode().as_bytes())
                            .and_then(|()| file.sync_all())
                            .map_err(io_err(&path))?;
                        return Ok(ip);
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        }
        let candidates: Vec<Ipv4Addr> = self.pool().collect();
        let start = self
            .last_reserved()
            .and_then(|last| candidates.iter().position(|ip| *ip == last))
            .map_or(0, |i| i + 1);
        for i in 0..candidates.len() {
            let ip = candidates[(start + i) % candidates.len()];
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(owner.encode().as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(io_err(&path))?;
                    self.write_last_reserved(ip)?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(IpamError::Exhausted {
            network: self.network.clone(),
            subnet: self.subnet,
            used: leases.len(),
        })
    }

    /// Releases every address `owner` holds; returns the released address, if any.
    pub fn release(&self, owner: &Owner) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        let mut released = None;
        for (ip, _) in self.read_leases()?.into_iter().filter(|(_, o)| o == owner) {
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => {
                    released = Some(ip);
                    let mut list = self.read_released();
                    list.retain(|(o, _)| o != owner);
                    list.push((owner.clone(), ip));
                    let excess = list.len().saturating_sub(RELEASED_KEPT);
                    list.drain(..excess);
                    self.write_released(&list)?;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(released)
    }

    /// The address `owner` holds, if any.
    pub fn lookup(&self, owner: &Owner) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        Ok(self
            .read_leases()?
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip))
    }

    /// Every lease in the store, sorted by address.
    pub fn leases(&self) -> Result<Vec<(Ipv4Addr, Owner)>, IpamError> {
        let _lock = self.lock()?;
        let mut leases = self.read_leases()?;
        leases.sort_by_key(|(ip, _)| *ip);
        Ok(leases)
    }

    /// Addresses that may be handed out, in order.
    fn pool(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let gateway = self.gateway();
        self.subnet.hosts().filter(move |ip| *ip != gateway)
    }

    fn read_leases(&self) -> Result<Vec<(Ipv4Addr, Owner)>, IpamError> {
        let mut leases = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            // Only files named by an address of our subnet are leases; the rest is bookkeeping.
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if !self.subnet.contains(&ip) {
                continue;
            }
            let path = entry.path();
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                // Released by another process between read_dir and here.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            if let Some(owner) = Owner::decode(&text) {
                leases.push((ip, owner));
            }
        }
        Ok(leases)
    }

    /// The remembered (owner, address) pairs, oldest first; unreadable lines are skipped (the
    /// list is a hint).
    fn read_released(&self) -> Vec<(Owner, Ipv4Addr)> {
        let text = fs::read_to_string(self.dir.join(RELEASED)).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let ip = f.next()?.parse().ok()?;
                let owner = Owner::new(f.next()?, f.next()?);
                Some((owner, ip))
            })
            .collect()
    }

    fn write_released(&self, list: &[(Owner, Ipv4Addr)]) -> Result<(), IpamError> {
        let text: String = list
            .iter()
            .map(|(o, ip)| format!("{ip} {} {}\n", o.container_id, o.ifname))
            .collect();
        let tmp = self.dir.join(format!("{RELEASED}.tmp"));
        let path = self.dir.join(RELEASED);
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn write_last_reserved(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        // A hint only: written via rename so a crash never leaves a torn file.
        let tmp = self.dir.join(format!("{LAST_RESERVED}.tmp"));
        let path = self.dir.join(LAST_RESERVED);
        fs::write(&tmp, ip.to_string()).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// The gateway of a pod subnet: its first host address.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test subnet")
    }

    #[test]
    fn first_allocation_is_dot_two_and_gateway_is_dot_one() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "r3s", net("10.42.3.0/24")).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 42, 3, 1));
        let ip = ipam.allocate(&Owner::new("c1", "eth0")).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 42, 3, 2));
        let content = fs::read_to_string(dir.path().join("r3s/10.42.3.2")).unwrap();
        assert_eq!(content, "c1\neth0");
    }

    #[test]
    fn add_is_idempotent_per_owner_and_distinct_across_owners() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "r3s", net("10.42.3.0/24")).unwrap();
        let a = ipam.allocate(&Owner::new("c1", "eth0")).unwrap();
        assert_eq!(ipam.allocate(&Owner::new("c1", "eth0")).unwrap(), a);
        let b = ipam.allocate(&Owner::new("c1", "eth1")).unwrap();
        let c = ipam.allocate(&Owner::new("c2", "eth0")).unwrap();
        assert_eq!(HashSet::from([a, b, c]).len(), 3);
        assert_eq!(ipam.leases().unwrap().len(), 3);
    }

    #[test]
    fn survives_restart_and_releases_on_del() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Owner::new("c1", "eth0");
        let ip = Ipam::open(dir.path(), "r3s", net("10.42.3.0/24"))
            .unwrap()
            .allocate(&owner)
            .unwrap();
        // A new instance (as after an agent restart) sees the lease.
        let ipam = Ipam::open(dir.path(), "r3s", net("10.42.3.0/24")).unwrap();
        assert_eq!(ipam.lookup(&owner).unwrap(), Some(ip));
        assert_eq!(ipam.allocate(&owner).unwrap(), ip);
        assert_ne!(ipam.allocate(&Owner::new("c2", "eth0")).unwrap(), ip);
        assert_eq!(ipam.release(&owner).unwrap(), Some(ip));
        assert_eq!(ipam.lookup(&owner).unwrap(), None);
        // Releasing twice is fine (CNI DEL is idempotent).
        assert_eq!(ipam.release(&owner).unwrap(), None);
        assert!(!dir.path().join("r3s").join(ip.to_string()).exists());
    }

    #[test]
    fn a_returning_owner_gets_its_address_back_if_free() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "r3s", net("10.42.3.0/24")).unwrap();
        let (a, b) = (Owner::new("pod-a", "eth0"), Owner::new("pod-b", "eth0"));
        let ip_a = ipam.allocate(&a).unwrap();
        ipam.release(&a).unwrap();
        // Others do not get it next (round robin), and a comes back to it.
        assert_ne!(ipam.allocate(&b).unwrap(), ip_a);
        assert_eq!(ipam.allocate(&a).unwrap(), ip_a);
        // Taken by someone else meanwhile: a gets another one.
        ipam.release(&a).unwrap();
        ipam.release(&b).unwrap();
        let c = Owner::new("pod-c", "eth0");
        let mut got = ipam.allocate(&c).unwrap();
        while got != ip_a {
            got = ipam
                .allocate(&Owner::new(format!("x{got}"), "eth0"))
                .unwrap();
        }
        assert_ne!(ipam.allocate(&a).unwrap(), ip_a);
    }

    #[test]
    fn thousand_add_del_cycles_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "r3s", net("10.42.3.0/24")).unwrap();
        let resident = ipam.allocate(&Owner::new("resident", "eth0")).unwrap();
        let mut seen = HashSet::new();
        for i in 0..1000 {
            let owner = Owner::new(format!("cycle{i}"), "eth0");
            let ip = ipam.allocate(&owner).unwrap();
            assert_ne!(ip, resident);
            seen.insert(ip);
            assert_eq!(ipam.release(&owner).unwrap(), Some(ip));
        }
        // Round-robin walked the whole pool (253 addresses minus the resident one)...
        assert_eq!(seen.len(), 252);
        // ...and nothing is left behind but the resident lease.
        let leases = ipam.leases().unwrap();
        assert_eq!(leases, vec![(resident, Owner::new("resident", "eth0"))]);
        assert_eq!(ipam.read_released().len(), RELEASED_KEPT);
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // A /29 has 6 hosts: .1 is the gateway, so 5 pods fit.
        let ipam = Ipam::open(dir.path(), "small", net("10.42.9.0/29")).unwrap();
        for i in 0..5 {
            ipam.allocate(&Owner::new(format!("c{i}"), "eth0")).unwrap();
        }
        let err = ipam.allocate(&Owner::new("c5", "eth0")).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { used: 5, .. }), "{err}");
        assert!(err.to_string().contains("no free address"), "{err}");
        // Freeing one makes room again.
        ipam.release(&Owner::new("c2", "eth0")).unwrap();
        assert!(ipam.allocate(&Owner::new("c5", "eth0")).is_ok());
    }

    #[test]
    fn concurrent_allocators_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let ipam = Ipam::open(&path, "r3s", net("10.42.3.0/24")).unwrap();
                    (0..40)
                        .map(|i| {
                            ipam.allocate(&Owner::new(format!("t{t}c{i}"), "eth0"))
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 160);
        assert_eq!(unique.len(), 160);
    }

    #[test]
    fn rejects_path_escaping_names() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Ipam::open(dir.path(), "../x", net("10.42.3.0/24")).is_err());
        let ipam = Ipam::open(dir.path(), "r3s", net("10.42.3.0/24")).unwrap();
        assert!(matches!(
            ipam.allocate(&Owner::new("a/b", "eth0")),
            Err(IpamError::InvalidName { .. })
        ));
    }
}
