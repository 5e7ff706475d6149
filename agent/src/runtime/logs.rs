//! Container output as CRI log files, the format kubelet and `kubectl logs` expect:
//! one line per record, `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <text>`.
//!
//! Each stream is a pipe whose write end the container gets as stdout or stderr; a task per
//! stream reads the other end until EOF (every holder of the write end has exited) and appends
//! records. Invariant: each record goes out in one `write` on an `O_APPEND` descriptor, so the
//! two streams' records interleave whole. A line longer than [`MAX_LINE`] is split into partial
//! (`P`) records ending with a full (`F`) one, as containerd does.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Longest record body before a line is split (containerd's default).
pub const MAX_LINE: usize = 16 * 1024;

/// Errors creating the pipes or the log file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating an output pipe: {0}")]
    Pipe(#[source] std::io::Error),
}

/// The container's ends of its output pipes, and the tasks copying them into the log.
pub struct LogPipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub copiers: Vec<JoinHandle<()>>,
}

/// Opens (appending) the log file at `path` and starts copying two new pipes into it.
pub async fn start(path: &Path) -> Result<LogPipes, LogError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| LogError::File {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let mut copiers = Vec::new();
    let mut ends = Vec::new();
    for stream in ["stdout", "stderr"] {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|source| LogError::File {
                path: path.to_path_buf(),
                source,
            })?;
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| LogError::Pipe(e.into()))?;
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rx).map_err(LogError::Pipe)?;
        copiers.push(tokio::spawn(copy(rx, file, stream)));
        ends.push(tx);
    }
    let stderr = ends
        .pop()
        .ok_or_else(|| LogError::Pipe(std::io::Error::other("no pipe")))?;
    let stdout = ends
        .pop()
        .ok_or_else(|| LogError::Pipe(std::io::Error::other("no pipe")))?;
    Ok(LogPipes {
        stdout,
        stderr,
        copiers,
    })
}

async fn copy(mut rx: tokio::net::unix::pipe::Receiver, mut file: tokio::fs::File, stream: &str) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let out = complete_records(&mut pending, stream);
        if !out.is_empty() && file.write_all(&out).await.is_err() {
            // A full disk must not block the container on a full pipe: keep draining.
            continue;
        }
    }
    if !pending.is_empty() {
        let mut out = Vec::new();
        record(&mut out, stream, 'F', &pending);
        let _ = file.write_all(&out).await;
    }
    let _ = file.flush().await;
}

/// The blocking twin of the copier, for the container shim (a process without an async
/// runtime): copies `rx` into `file` as CRI records until EOF.
pub fn copy_blocking(mut rx: std::fs::File, mut file: std::fs::File, stream: &str) {
    use std::io::{Read, Write};
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match rx.read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let out = complete_records(&mut pending, stream);
        // A full disk must not block the container on a full pipe: keep draining.
        let _ = file.write_all(&out);
    }
    if !pending.is_empty() {
        let mut out = Vec::new();
        record(&mut out, stream, 'F', &pending);
        let _ = file.write_all(&out);
    }
}

/// Takes every complete line (and every over-long chunk) off the front of `pending` and returns
/// them as records.
fn complete_records(pending: &mut Vec<u8>, stream: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        match pending.iter().position(|&b| b == b'\n') {
            Some(pos) if pos <= MAX_LINE => {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                record(&mut out, stream, 'F', &line[..pos]);
            }
            _ if pending.len() > MAX_LINE => {
                let part: Vec<u8> = pending.drain(..MAX_LINE).collect();
                record(&mut out, stream, 'P', &part);
            }
            _ => break,
        }
    }
    out
}

fn record(out: &mut Vec<u8>, stream: &str, tag: char, body: &[u8]) {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    out.extend_from_slice(format!("{ts} {stream} {tag} ").as_bytes());
    out.extend_from_slice(body);
    out.push(b'\n');
}

/// Parses one CRI log line into (stream, tag, text); `None` if it is not one.
pub fn parse_line(line: &str) -> Option<(&str, char, &str)> {
    let mut parts = line.splitn(4, ' ');
    let _ts = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?.chars().next()?;
    Some((stream, tag, parts.next().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_partial_records_and_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let pipes = start(&path).await.unwrap();
        let long = "x".repeat(MAX_LINE + 10);
        let out = std::fs::File::from(pipes.stdout);
        let err = std::fs::File::from(pipes.stderr);
        use std::io::Write;
        (&out).write_all(b"hello\nwor").unwrap();
        (&out)
            .write_all(format!("ld\n{long}\ntail").as_bytes())
            .unwrap();
        (&err).write_all(b"oops\n").unwrap();
        drop(out);
        drop(err);
        for c in pipes.copiers {
            c.await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let recs: Vec<_> = text.lines().map(|l| parse_line(l).unwrap()).collect();
        let stdout: Vec<_> = recs.iter().filter(|r| r.0 == "stdout").collect();
        assert_eq!(stdout[0], &("stdout", 'F', "hello"));
        assert_eq!(stdout[1], &("stdout", 'F', "world"));
        assert_eq!(stdout[2].1, 'P');
        assert_eq!(stdout[2].2.len(), MAX_LINE);
        assert_eq!(stdout[3], &("stdout", 'F', "xxxxxxxxxx"));
        assert_eq!(stdout[4], &("stdout", 'F', "tail"));
        assert!(recs.contains(&("stderr", 'F', "oops")));
        let ts = text.split(' ').next().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    }
}
