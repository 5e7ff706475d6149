//! The `NETLINK_NETFILTER` socket a transaction goes through, bound to a network namespace.
//!
//! A netlink socket stays in the namespace it was created in, so [`Conn::open_in`] creates it on a
//! helper thread inside the target namespace and the caller keeps using it from anywhere. Send
//! and receive buffers are forced large enough for the batch (a batch is one datagram; thousands
//! of Services make it megabytes), and every answer up to the batch's last message is read.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::NftError;
use super::batch::Batch;

const NLMSG_ERROR: u16 = 2;
/// `MSG_DONTWAIT` (0x40 on every Linux architecture).
const MSG_DONTWAIT: i32 = 0x40;

/// A netfilter netlink socket.
pub struct Conn {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("seq", &self.seq).finish()
    }
}

impl Conn {
    /// A socket in the calling thread's namespace.
    pub fn open() -> Result<Conn, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
        socket.bind_auto().map_err(NftError::Socket)?;
        // A kernel that stops answering must not hang the caller forever.
        set_timeout(&socket, Duration::from_secs(30))?;
        Ok(Conn { socket, seq: 0 })
    }

    /// A socket in the network namespace at `path` (`None`: the caller's).
    pub fn open_in(path: Option<&Path>) -> Result<Conn, NftError> {
        match path {
            None => Conn::open(),
            Some(p) => crate::netns::run_in(p, Conn::open).map_err(NftError::Netns)?,
        }
    }

    /// A fresh batch for `family` whose sequence numbers follow this socket's last ones.
    pub fn batch(&mut self, family: u8) -> Batch {
        Batch::new(family, self.seq)
    }

    /// Sends one transaction and waits for its answers; the first error wins and means the
    /// kernel applied none of it.
    pub fn commit(&mut self, batch: Batch, what: &str) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (bytes, last_seq) = batch.finish();
        self.seq = last_seq.wrapping_add(1);
        let size = bytes.len() + 4096;
        force_buffer(&self.socket, nix::libc::SO_SNDBUFFORCE, size.max(1 << 20))?;
        force_buffer(&self.socket, nix::libc::SO_RCVBUFFORCE, 1 << 20)?;
        let sent = self.socket.send(&bytes, 0).map_err(NftError::Socket)?;
        if sent != bytes.len() {
            return Err(NftError::Socket(std::io::Error::other(
                "short send of an nf_tables batch",
            )));
        }
        let begin = last_seq.wrapping_sub(count_messages(&bytes).saturating_sub(2) as u32);
        let mut first_error: Option<(u32, i32)> = None;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let flags = if first_error.is_some() {
                MSG_DONTWAIT
            } else {
                0
            };
            let n = match self.socket.recv(&mut &mut buf[..], flags) {
                Ok(n) => n,
                // After an error the kernel may not acknowledge anything else.
                Err(e) if first_error.is_some() && e.kind() == std::io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(NftError::NoAnswer {
                        what: what.to_string(),
                    });
                }
                Err(e) => return Err(NftError::Socket(e)),
            };
            let mut done = false;
            for (seq, code) in parse_acks(&buf[..n]).ok_or(NftError::Malformed)? {
                if code != 0 && first_error.is_none() {
                    first_error = Some((seq, code));
                }
                // The last message's answer ends the batch; an error on the framing too.
                if seq == last_seq || (code != 0 && (seq == begin || seq > last_seq)) {
                    done = true;
                }
            }
            if done {
                break;
            }
        }
        match first_error {
            Some((seq, code)) => Err(NftError::Rejected {
                what: what.to_string(),
                message: seq.wrapping_sub(begin),
                source: std::io::Error::from_raw_os_error(-code),
            }),
            None => Ok(()),
        }
    }
}

fn count_messages(mut data: &[u8]) -> usize {
    let mut n = 0;
    while data.len() >= 4 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            break;
        }
        n += 1;
        data = &data[(len + 3) & !3..];
    }
    n
}

fn set_timeout(socket: &Socket, d: Duration) -> Result<(), NftError> {
    let tv = nix::libc::timeval {
        tv_sec: d.as_secs() as nix::libc::time_t,
        tv_usec: 0,
    };
    setsockopt(socket, nix::libc::SO_RCVTIMEO, &tv)
}

fn force_buffer(socket: &Socket, opt: i32, size: usize) -> Result<(), NftError> {
    let v: nix::libc::c_int = size.min(i32::MAX as usize) as nix::libc::c_int;
    setsockopt(socket, opt, &v)
}

fn setsockopt<T>(socket: &Socket, opt: i32, value: &T) -> Result<(), NftError> {
    // SAFETY: `value` points to a live `T` of the size passed; the fd is owned by `socket`.
    let rc = unsafe {
        nix::libc::setsockopt(
            socket.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(NftError::Socket(std::io::Error::last_os_error()))
    }
}

/// The (sequence number, error code) of each `NLMSG_ERROR` message in one datagram (0 = ack,
/// negative errno = failure); `None` if the datagram is malformed.
pub fn parse_acks(mut data: &[u8]) -> Option<Vec<(u32, i32)>> {
    let mut codes = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(data[8..12].try_into().ok()?);
        if len < 16 || len > data.len() {
            return None;
        }
        if ty == NLMSG_ERROR {
            let code = data.get(16..20)?;
            codes.push((seq, i32::from_ne_bytes(code.try_into().ok()?)));
        }
        data = data.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Some(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_acks_and_errors() {
        let mut msg = Vec::new();
        for (seq, code) in [(7u32, 0i32), (8, -17)] {
            msg.extend_from_slice(&36u32.to_ne_bytes());
            msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            msg.extend_from_slice(&[0; 2]);
            msg.extend_from_slice(&seq.to_ne_bytes());
            msg.extend_from_slice(&[0; 4]);
            msg.extend_from_slice(&code.to_ne_bytes());
            msg.extend_from_slice(&[0; 16]);
        }
        assert_eq!(parse_acks(&msg), Some(vec![(7, 0), (8, -17)]));
        assert_eq!(
            parse_acks(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
    }
}
