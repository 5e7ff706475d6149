//! `/containerLogs/{namespace}/{pod}/{container}`: a container's output from the CRI log files
//! the runtime writes (`<pod logs dir>/<container>/<run>.log`, see [`crate::runtime::logs`]),
//! with kubelet's options: `follow`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`,
//! `previous`, `limitBytes`.
//!
//! The current run is the highest-numbered file, `previous` the one before it. Partial (`P`)
//! records are joined with the record that completes them, so a long line comes out whole.
//! Following polls the file (every [`POLL`]) and ends when the container stops running or a newer
//! run starts, when `limitBytes` is reached, or when the client goes away.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::{KubeletError, find_pod, query_flag, query_get, query_pairs};
use crate::pods::Ctx;

/// How often a followed log file is read again.
const POLL: Duration = Duration::from_millis(250);
/// How often following checks that the container still runs.
const LIVENESS_EVERY: u32 = 4;

/// The options of one request.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    pub previous: bool,
    pub limit: Option<usize>,
}

impl LogOptions {
    fn from_query(q: &[(String, String)]) -> Result<Self, KubeletError> {
        let num = |key: &str| -> Result<Option<i64>, KubeletError> {
            query_get(q, key)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| KubeletError::BadRequest(format!("invalid {key} {v:?}")))
                })
                .transpose()
        };
        let mut since = num("sinceSeconds")?.map(|s| Utc::now() - chrono::Duration::seconds(s));
        if let Some(t) = query_get(q, "sinceTime") {
            let t = DateTime::parse_from_rfc3339(t)
                .map_err(|_| KubeletError::BadRequest(format!("invalid sinceTime {t:?}")))?;
            since = Some(t.with_timezone(&Utc));
        }
        Ok(Self {
            follow: query_flag(q, "follow"),
            tail: num("tailLines")?.map(|n| n.max(0) as usize),
            since,
            timestamps: query_flag(q, "timestamps"),
            previous: query_flag(q, "previous"),
            limit: num("limitBytes")?.map(|n| n.max(0) as usize),
        })
    }
}

/// One CRI record.
struct Record<'a> {
    ts: &'a str,
    full: bool,
    body: &'a [u8],
}

fn records(data: &[u8]) -> Vec<Record<'_>> {
    data.split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut parts = line.splitn(4, |&b| b == b' ');
            let ts = std::str::from_utf8(parts.next()?).ok()?;
            let _stream = parts.next()?;
            let tag = parts.next()?;
            let body = parts.next().unwrap_or(&[]);
            Some(Record {
                ts,
                full: tag != b"P",
                body,
            })
        })
        .collect()
}

/// Renders complete records as kubectl shows them; `tail` and `since` select whole lines.
pub fn render(data: &[u8], opts: &LogOptions, tail: Option<usize>) -> Vec<u8> {
    let recs = records(data);
    // Lines: runs of partial records closed by a full one.
    let mut lines: Vec<&[Record<'_>]> = Vec::new();
    let mut start = 0;
    for (i, r) in recs.iter().enumerate() {
        if r.full {
            lines.push(&recs[start..=i]);
            start = i + 1;
        }
    }
    if start < recs.len() {
        lines.push(&recs[start..]);
    }
    if let Some(since) = opts.since {
        lines.retain(|l| {
            l.first()
                .and_then(|r| DateTime::parse_from_rfc3339(r.ts).ok())
                .is_some_and(|t| t >= since)
        });
    }
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = Vec::new();
    for line in lines {
        if opts.timestamps
            && let Some(first) = line.first()
        {
            out.extend_from_slice(first.ts.as_bytes());
            out.push(b' ');
        }
        for r in line {
            out.extend_from_slice(r.body);
            if r.full {
                out.push(b'\n');
            }
        }
    }
    out
}

/// The numbered log files of one container, ascending.
fn runs(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

pub async fn handle(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    uri: Uri,
) -> Result<Response, KubeletError> {
    let q = query_pairs(uri.query());
    let opts = LogOptions::from_query(&q)?;
    let pod = find_pod(&ctx, &namespace, &name).await?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let known = pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == container)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
    });
    if !known {
        return Err(KubeletError::BadRequest(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let dir = ctx
        .layout
        .pod_logs(&namespace, &name, &uid)
        .join(&container);
    let all = runs(&dir);
    let pick = if opts.previous {
        all.len().checked_sub(2).map(|i| all[i].clone())
    } else {
        all.last().cloned()
    };
    let Some((run, path)) = pick else {
        return Err(KubeletError::BadRequest(if opts.previous {
            format!("previous terminated container \"{container}\" in pod \"{name}\" not found")
        } else {
            let reason = waiting_reason(&pod, &container);
            format!("container \"{container}\" in pod \"{name}\" is waiting to start: {reason}")
        }));
    };
    let data = tokio::fs::read(&path)
        .await
        .map_err(|e| KubeletError::Internal(format!("reading {}: {e}", path.display())))?;
    // Only complete records: a record being written is picked up by the next read.
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut first = render(&data[..complete], &opts, opts.tail);
    let mut remaining = opts.limit;
    if let Some(limit) = remaining.as_mut() {
        first.truncate(*limit);
        *limit -= first.len();
    }
    let text_plain = [(header::CONTENT_TYPE, "text/plain")];
    if !opts.follow || opts.previous || remaining == Some(0) {
        return Ok((text_plain, first).into_response());
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    let follow = Follow {
        ctx,
        namespace,
        name,
        container,
        dir,
        run,
        path,
        offset: complete as u64,
        remaining,
        opts,
    };
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(first).await.is_err() {
            return;
        }
        follow.run(tx).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    Ok((text_plain, Body::from_stream(stream)).into_response())
}

fn waiting_reason(pod: &Pod, container: &str) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|l| l.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone())
        .unwrap_or_else(|| "ContainerCreating".into())
}

struct Follow {
    ctx: Arc<Ctx>,
    namespace: String,
    name: String,
    container: String,
    dir: PathBuf,
    run: u32,
    path: PathBuf,
    offset: u64,
    remaining: Option<usize>,
    opts: LogOptions,
}

impl Follow {
    async fn run(mut self, tx: mpsc::Sender<Vec<u8>>) {
        let mut tick = 0u32;
        loop {
            let last_round = !self.still_current(tick).await;
            tick = tick.wrapping_add(1);
            let Ok(chunk) = self.read_new().await else {
                return;
            };
            if !chunk.is_empty() && tx.send(chunk).await.is_err() {
                return;
            }
            if last_round || self.remaining == Some(0) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return,
            }
        }
    }

    /// Whether this run may still write: no newer run exists and (checked every
    /// [`LIVENESS_EVERY`] rounds) the container still runs.
    async fn still_current(&self, tick: u32) -> bool {
        if runs(&self.dir).last().is_some_and(|(n, _)| *n > self.run) {
            return false;
        }
        if !tick.is_multiple_of(LIVENESS_EVERY) {
            return true;
        }
        match find_pod(&self.ctx, &self.namespace, &self.name).await {
            Ok(pod) => super::running_container(&pod, &self.container).is_ok(),
            Err(KubeletError::PodNotFound(_)) => false,
            Err(_) => true,
        }
    }

    async fn read_new(&mut self) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = tokio::fs::File::open(&self.path).await?;
        f.seek(std::io::SeekFrom::Start(self.offset)).await?;
        let mut data = Vec::new();
        f.read_to_end(&mut data).await?;
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        let mut out = render(&data[..complete], &self.opts, None);
        if let Some(limit) = self.remaining.as_mut() {
            out.truncate(*limit);
            *limit -= out.len();
        }
        Ok(out)
    }
}

/// Follows the current run's log from its end, for attach: new output record by record,
/// tagged with its stream.
pub struct Tail {
    dir: PathBuf,
    run: Option<(u32, PathBuf)>,
    offset: u64,
}

impl Tail {
    /// Starts at the current end of the newest run's log.
    pub async fn at_end(dir: &Path) -> Self {
        let run = runs(dir).pop();
        let offset = match &run {
            Some((_, p)) => tokio::fs::metadata(p).await.map_or(0, |m| m.len()),
            None => 0,
        };
        Self {
            dir: dir.to_path_buf(),
            run,
            offset,
        }
    }

    /// Whether a newer run has started since.
    pub fn superseded(&self) -> bool {
        let newest = runs(&self.dir).pop().map(|(n, _)| n);
        newest.is_some() && newest != self.run.as_ref().map(|(n, _)| *n)
    }

    /// The records written since the last call, as `(stream, text)` (a full record's text ends
    /// with a newline).
    pub async fn read_new(&mut self) -> Vec<(String, Vec<u8>)> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        if self.run.is_none() {
            self.run = runs(&self.dir).pop();
            self.offset = 0;
        }
        let Some((_, path)) = &self.run else {
            return Vec::new();
        };
        let Ok(mut f) = tokio::fs::File::open(path).await else {
            return Vec::new();
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).await.is_err() {
            return Vec::new();
        }
        let mut data = Vec::new();
        if f.read_to_end(&mut data).await.is_err() {
            return Vec::new();
        }
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        data[..complete]
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let mut parts = line.splitn(4, |&b| b == b' ');
                let _ts = parts.next()?;
                let stream = String::from_utf8_lossy(parts.next()?).into_owned();
                let full = parts.next()? != b"P";
                let mut body = parts.next().unwrap_or(&[]).to_vec();
                if full {
                    body.push(b'\n');
                }
                Some((stream, body))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = b"2025-01-01T00:00:01.000000000Z stdout F one\n\
2025-01-01T00:00:02.000000000Z stderr F two\n\
2025-01-01T00:00:03.000000000Z stdout P thr\n\
2025-01-01T00:00:03.100000000Z stdout F ee\n\
2025-01-01T00:00:04.000000000Z stdout F four\n";

    #[test]
    fn renders_lines_joining_partials() {
        let o = LogOptions::default();
        assert_eq!(render(LOG, &o, None), b"one\ntwo\nthree\nfour\n");
    }

    #[test]
    fn tail_counts_whole_lines() {
        let o = LogOptions::default();
        assert_eq!(render(LOG, &o, Some(2)), b"three\nfour\n");
        assert_eq!(render(LOG, &o, Some(0)), b"");
        assert_eq!(render(LOG, &o, Some(10)), b"one\ntwo\nthree\nfour\n");
    }

    #[test]
    fn timestamps_and_since() {
        let o = LogOptions {
            timestamps: true,
            since: Some("2025-01-01T00:00:03Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(render(LOG, &o, None)).unwrap(),
            "2025-01-01T00:00:03.000000000Z three\n2025-01-01T00:00:04.000000000Z four\n"
        );
    }

    #[test]
    fn options_from_query() {
        let q = query_pairs(Some(
            "follow=true&tailLines=5&timestamps=true&limitBytes=100&previous=false",
        ));
        let o = LogOptions::from_query(&q).unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail, o.limit), (Some(5), Some(100)));
        assert!(LogOptions::from_query(&query_pairs(Some("tailLines=x"))).is_err());
    }

    #[test]
    fn runs_are_sorted_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 10, 2] {
            std::fs::write(dir.path().join(format!("{n}.log")), "").unwrap();
        }
        std::fs::write(dir.path().join("junk"), "").unwrap();
        let r: Vec<u32> = runs(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(r, [0, 2, 10]);
    }
}
