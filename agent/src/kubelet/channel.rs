//! The `channel.k8s.io` stream protocols over WebSocket (`v4.channel.k8s.io`, `v5.channel.k8s.io`):
//! every binary message is one channel byte followed by payload. Exec and attach use channels
//! 0 stdin, 1 stdout, 2 stderr, 3 error (a `Status` object, sent once at the end), 4 resize
//! (`{"Width":W,"Height":H}`) and, in v5 only, 255 close (`[255, channel]`: the client closed
//! that stream). Port-forward over v4 uses channel `2i` for data and `2i+1` for errors of the
//! i-th requested port, each opened by a first message `[channel, port_lo, port_hi]`.

use serde_json::{Value, json};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// The exec/attach subprotocols this agent speaks, best first.
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// One message: the channel byte, then the payload.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

/// Splits a message into channel and payload; `None` for an empty message.
pub fn split(msg: &[u8]) -> Option<(u8, &[u8])> {
    msg.split_first().map(|(c, rest)| (*c, rest))
}

/// A terminal size from a resize message, `None` if it is not one.
pub fn parse_resize(payload: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let w = u16::try_from(v["Width"].as_u64()?).ok()?;
    let h = u16::try_from(v["Height"].as_u64()?).ok()?;
    Some((w, h))
}

/// The error-channel Status of a command that exited with `code` (kubelet's wording).
pub fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command, exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The error-channel Status of a failure that is not an exit code.
pub fn failure_status(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message})
}

/// The first message of a v4 port-forward channel: the channel and the port, little-endian.
pub fn port_header(channel: u8, port: u16) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![channel, lo, hi]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_splits() {
        assert_eq!(frame(STDOUT, b"hi"), vec![1, b'h', b'i']);
        assert_eq!(split(&[2, b'x']), Some((STDERR, &b"x"[..])));
        assert_eq!(split(&[CLOSE, STDIN]), Some((255, &[0u8][..])));
        assert_eq!(split(&[]), None);
    }

    #[test]
    fn resize_message() {
        assert_eq!(
            parse_resize(br#"{"Width":100,"Height":30}"#),
            Some((100, 30))
        );
        assert_eq!(
            parse_resize(b"{\"Width\":80,\"Height\":24}\n"),
            Some((80, 24))
        );
        assert_eq!(parse_resize(b"junk"), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(exit_status(0)["status"], "Success");
        let s = exit_status(3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(failure_status("boom")["message"], "boom");
    }

    #[test]
    fn port_forward_header() {
        assert_eq!(port_header(2, 8080), vec![2, 0x90, 0x1f]);
    }
}
