//! Container output as CRI log files, the format kubelet and `kubectl logs` expect:
//! one line per record, `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <text>`.
//!
//! Each stream is a pipe whose write end the container gets as stdout or stderr; a thread of
//! the container's shim (its [`super::waiter`]) reads the other end until EOF and appends records. Invariant: each record goes out in one `write` on an `O_APPEND` descriptor, so the
//! two streams' records interleave whole. A line longer than [`MAX_LINE`] is split into partial
//! (`P`) records ending with a full (`F`) one, as containerd does.

/// Longest record body before a line is split (containerd's default).
pub const MAX_LINE: usize = 16 * 1024;

/// Copies `rx` into `file` as CRI records until EOF (every holder of the write end exited).
pub fn copy_blocking(mut rx: std::fs::File, file: std::fs::File, stream: &'static str) {
    use std::io::Read;
    let mut w = CriWriter::new(file, stream);
    let mut buf = vec![0u8; 8192];
    loop {
        match rx.read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
            Ok(n) => w.push(&buf[..n]),
        }
    }
    w.finish();
}

/// One stream's CRI records, fed with whatever a read returned: whole lines go out at once, an
/// unfinished line waits in `pending` for the rest (or for [`CriWriter::finish`]). The
/// container's shim holds one per stream (see [`super::waiter`]).
pub struct CriWriter {
    file: std::fs::File,
    stream: &'static str,
    pending: Vec<u8>,
}

impl CriWriter {
    pub fn new(file: std::fs::File, stream: &'static str) -> Self {
        CriWriter {
            file,
            stream,
            pending: Vec::new(),
        }
    }

    /// Appends `data` and writes every record it completes.
    pub fn push(&mut self, data: &[u8]) {
        use std::io::Write;
        self.pending.extend_from_slice(data);
        let out = complete_records(&mut self.pending, self.stream);
        // A full disk must not block the container on a full pipe: keep draining.
        if !out.is_empty() {
            let _ = self.file.write_all(&out);
        }
    }

    /// Writes an unfinished line as a partial (`P`) record now, for a terminal, whose prompt
    /// must reach an attacher before the line ends; readers join it with what follows.
    pub fn flush_partial(&mut self) {
        use std::io::Write;
        if !self.pending.is_empty() {
            let mut out = Vec::new();
            record(&mut out, self.stream, 'P', &self.pending);
            self.pending.clear();
            let _ = self.file.write_all(&out);
        }
    }

    /// Writes what is left as a last full record (the stream ended without a newline).
    pub fn finish(mut self) {
        use std::io::Write;
        if !self.pending.is_empty() {
            let mut out = Vec::new();
            record(&mut out, self.stream, 'F', &self.pending);
            let _ = self.file.write_all(&out);
        }
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

    #[test]
    fn lines_partial_records_and_both_streams() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap()
        };
        let (out_rx, out) = nix::unistd::pipe().unwrap();
        let (err_rx, err) = nix::unistd::pipe().unwrap();
        let (f1, f2) = (open(), open());
        let copiers = [
            std::thread::spawn(move || copy_blocking(out_rx.into(), f1, "stdout")),
            std::thread::spawn(move || copy_blocking(err_rx.into(), f2, "stderr")),
        ];
        let (out, err) = (std::fs::File::from(out), std::fs::File::from(err));
        let long = "x".repeat(MAX_LINE + 10);
        (&out).write_all(b"hello\nwor").unwrap();
        (&out)
            .write_all(format!("ld\n{long}\ntail").as_bytes())
            .unwrap();
        (&err).write_all(b"oops\n").unwrap();
        drop(out);
        drop(err);
        for c in copiers {
            c.join().unwrap();
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

    #[test]
    fn terminal_prompts_go_out_as_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut w = CriWriter::new(file, "stdout");
        w.push(b"/ # ");
        w.flush_partial();
        w.push(b"echo hi\r\nhi\r\n/ # ");
        w.flush_partial();
        // Nothing pending: no empty record.
        w.flush_partial();
        w.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        // Split on LF only: the CR a terminal puts before it belongs to the record.
        let recs: Vec<_> = text
            .split_terminator('\n')
            .map(|l| parse_line(l).unwrap())
            .collect();
        assert_eq!(
            recs,
            vec![
                ("stdout", 'P', "/ # "),
                ("stdout", 'F', "echo hi\r"),
                ("stdout", 'F', "hi\r"),
                ("stdout", 'P', "/ # "),
            ]
        );
    }
}
