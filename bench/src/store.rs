//! Item 2: store writes per second with 1, 8 and 64 concurrent writers, each writer updating its
//! own key with a ~600-byte value (a Lease), every write acknowledged only once durable:
//! - the r3s store, in-process (`SqliteStore::update`, WAL, synchronous=FULL, group commit);
//! - raw rusqlite, one row inserted and committed per transaction with the same file settings
//!   (single writer: SQLite has one writer at a time);
//! - etcd (Debian's `etcd-server`, started here on 127.0.0.1 with a temp data dir, default fsync),
//!   through its gRPC-gateway JSON API (`POST /v3/kv/put`) over plain HTTP/1.1 with hyper, since
//!   the etcd gRPC client crate needs `protoc`. That path adds JSON, base64 and a loopback round
//!   trip per write, so the r3s side is also measured through its own network path: the API
//!   server over HTTPS (merge-patch of a ConfigMap, see [`crate::api::patch_writes`]), which adds
//!   TLS, authentication, admission and the object's JSON on top.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use r3s_server::store::sqlite::schema;
use r3s_server::store::{SqliteStore, Store, StoreOptions};

use crate::cluster::Proc;

pub const SEC: &str = "2. Store";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub const WRITERS: [usize; 3] = [1, 8, 64];

pub fn lease_value(n: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"kind":"Lease","apiVersion":"coordination.k8s.io/v1","metadata":{{"name":"node-1","namespace":"kube-node-lease","uid":"3f2c6f5e-8a4b-4c1e-9d1a-2b7c0e4f9a11","resourceVersion":"{n}","creationTimestamp":"2026-11-22T06:00:00Z","ownerReferences":[{{"apiVersion":"v1","kind":"Node","name":"node-1","uid":"9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4"}}]}},"spec":{{"holderIdentity":"node-1","leaseDurationSeconds":40,"renewTime":"2026-11-22T06:{:02}:{:02}.000000Z"}}}}"#,
        (n / 60) % 60,
        n % 60
    ))
}

pub async fn r3s_store(dir: &Path, writers: usize, secs: Duration) -> anyhow::Result<f64> {
    let s = Arc::new(SqliteStore::open(
        dir.join(format!("store-{writers}.db")),
        StoreOptions::default(),
    )?);
    for w in 0..writers {
        s.create(&format!("/bench/{w}"), lease_value(0)).await?;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let key = format!("/bench/{w}");
                let mut rev = s.get(&key)?.map_or(0, |kv| kv.mod_revision);
                let mut n = 0u64;
                while start.elapsed() < secs {
                    rev = s
                        .update(&key, lease_value(n as usize), rev)
                        .await?
                        .mod_revision;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

pub fn raw_sqlite(dir: &Path, secs: Duration) -> anyhow::Result<f64> {
    let conn = rusqlite::Connection::open(dir.join("raw.db"))?;
    conn.pragma_update(None, "page_size", schema::PAGE_SIZE)?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT NOT NULL, value BLOB NOT NULL)",
    )?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.execute(
            "INSERT INTO t (key, value) VALUES (?1, ?2)",
            rusqlite::params![format!("/bench/{}", n % 64), &lease_value(n as usize)[..]],
        )?;
        conn.execute_batch("COMMIT")?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A single-member etcd on 127.0.0.1 with its data in `dir`.
pub struct Etcd {
    pub proc: Proc,
    pub url: String,
    pub version: String,
}

pub async fn start_etcd(dir: &Path, logs: &Path) -> anyhow::Result<Etcd> {
    let etcd = "/usr/bin/etcd";
    if !Path::new(etcd).exists() {
        // The runner installs what it compares against, as documented in its --help.
        let st = std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get install etcd-server")?;
        if !st.success() || !Path::new(etcd).exists() {
            bail!("etcd-server is not installed and apt-get install failed");
        }
    }
    let version = std::process::Command::new(etcd)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let (client, peer) = ("http://127.0.0.1:23790", "http://127.0.0.1:23800");
    let mut cmd = std::process::Command::new(etcd);
    cmd.arg("--name")
        .arg("r3sbench")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .arg("--initial-cluster")
        .arg(format!("r3sbench={peer}"))
        .args(["--log-level", "warn"]);
    let mut proc = Proc::spawn("etcd", cmd, logs.join("etcd.log"))?;
    let http = http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = http::Request::get(format!("{client}/health")).body(Full::new(Bytes::new()))?;
        if let Ok(resp) = http.request(req).await
            && resp.status().is_success()
        {
            break;
        }
        if !proc.alive() || Instant::now() > deadline {
            bail!("etcd did not start:\n{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Etcd {
        proc,
        url: client.into(),
        version,
    })
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(128)
        .build_http()
}

pub async fn etcd_writes(e: &Etcd, writers: usize, secs: Duration) -> anyhow::Result<f64> {
    let http = http_client();
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (http, url) = (http.clone(), format!("{}/v3/kv/put", e.url));
            let key = B64.encode(format!("/bench/{writers}/{w}"));
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < secs {
                    let body = serde_json::json!({"key": key, "value": B64.encode(lease_value(n as usize))});
                    let req = http::Request::post(&url)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
                    let resp = http.request(req).await?;
                    let ok = resp.status().is_success();
                    let _ = resp.into_body().collect().await?;
                    anyhow::ensure!(ok, "etcd put failed");
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
