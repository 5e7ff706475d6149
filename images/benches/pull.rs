//! Pull + unpack of a ~50 MB, 5-layer image from a local `docker-registry`: r3s (in a fresh child
//! process, so its peak RSS is the pull's alone) beside `skopeo copy` + `umoci unpack` of the same
//! image, interleaved per iteration. Prints wall seconds and peak RSS (max over the processes of one
//! run, measured by GNU time). Run with `cargo bench -p r3s-images --bench pull` (needs root, docker-registry, skopeo,
//! umoci, GNU time); `R3S_BENCH_ITERS` sets the iteration count (default 5).
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const LAYERS: usize = 5;
const LAYER_BYTES: usize = 10 << 20;

fn main() {
    if let Ok(reference) = std::env::var("R3S_BENCH_CHILD") {
        child_pull(
            &reference,
            Path::new(&std::env::var("R3S_BENCH_STORE").unwrap()),
        );
        return;
    }
    // `cargo test --benches` runs this too: only benchmark under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("skipped: run with `cargo bench` to measure");
        return;
    }
    for tool in [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/usr/bin/umoci",
        "/usr/bin/time",
    ] {
        if !require(tool, Path::new(tool).exists()) {
            return;
        }
    }
    if !have_root() {
        return;
    }
    let iters: usize = std::env::var("R3S_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let reg = Registry::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for compressible in [false, true] {
        let img = build_image(compressible);
        let total: usize = img.layers.iter().map(|l| l.data.len()).sum();
        let repo = if compressible {
            "bench-text"
        } else {
            "bench-random"
        };
        rt.block_on(reg.push(
            repo,
            "1",
            &img,
            &oci_client::secrets::RegistryAuth::Anonymous,
        ));
        println!(
            "image {repo}: {LAYERS} gzip layers, {:.1} MB compressed, {:.1} MB uncompressed",
            mb(total as u64),
            mb((LAYERS * LAYER_BYTES) as u64)
        );
        run(&format!("{}/{repo}:1", reg.addr), iters);
    }
}

/// Interleaves r3s and skopeo+umoci pulls of `reference`, prints per-iteration and median figures.
fn run(reference: &str, iters: usize) {
    let tmp = tempfile::Builder::new()
        .prefix("r3st-bench")
        .tempdir()
        .unwrap();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..iters {
        let store = tmp.path().join(format!("r3s-{i}"));
        let exe = std::env::current_exe().unwrap();
        let (t, rss) = measure(
            Command::new(exe)
                .env("R3S_BENCH_CHILD", reference)
                .env("R3S_BENCH_STORE", &store),
        );
        ours.push((t, rss));
        std::fs::remove_dir_all(&store).unwrap();

        let layout = tmp.path().join(format!("oci-{i}"));
        let bundle = tmp.path().join(format!("bundle-{i}"));
        let (t1, rss1) = measure(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{}:bench", layout.display()),
        ]));
        let (t2, rss2) = measure(Command::new("umoci").args([
            "unpack",
            "--image",
            &format!("{}:bench", layout.display()),
            &bundle.display().to_string(),
        ]));
        theirs.push((t1 + t2, rss1.max(rss2)));
        std::fs::remove_dir_all(&layout).unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
        println!(
            "iter {i}: r3s {:.3}s {:.1} MB RSS | skopeo+umoci {:.3}s (copy {:.3}s + unpack {:.3}s) {:.1} MB RSS",
            ours[i].0.as_secs_f64(),
            mb(ours[i].1),
            theirs[i].0.as_secs_f64(),
            t1.as_secs_f64(),
            t2.as_secs_f64(),
            mb(theirs[i].1)
        );
    }
    let (ot, orss) = median(&ours);
    let (tt, trss) = median(&theirs);
    println!(
        "median of {iters}: r3s {:.3}s, peak RSS {:.1} MB | skopeo copy + umoci unpack {:.3}s, peak RSS {:.1} MB | time ratio {:.2}x, RSS ratio {:.2}x",
        ot.as_secs_f64(),
        mb(orss),
        tt.as_secs_f64(),
        mb(trss),
        tt.as_secs_f64() / ot.as_secs_f64(),
        trss as f64 / orss as f64
    );
}

fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn median(v: &[(Duration, u64)]) -> (Duration, u64) {
    let mut t: Vec<Duration> = v.iter().map(|x| x.0).collect();
    let mut r: Vec<u64> = v.iter().map(|x| x.1).collect();
    t.sort();
    r.sort();
    (t[t.len() / 2], r[r.len() / 2])
}

/// Runs `cmd` under GNU time (a small intermediate process, so the peak RSS reported is the
/// command's own, not inherited from this large benchmark process), returns wall time and peak RSS.
fn measure(cmd: &mut Command) -> (Duration, u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-o")
        .arg(report.path())
        .arg("-f")
        .arg("%M")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    let start = Instant::now();
    let status = timed.status().unwrap();
    let elapsed = start.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    let kb: u64 = std::fs::read_to_string(report.path())
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    (elapsed, kb * 1024)
}

/// 5 layers of 10 MB: pseudo-random files (incompressible, like already-compressed data) or
/// text made of random words from a small vocabulary (compresses about 3x, like typical
/// binaries and libraries).
fn build_image(compressible: bool) -> Image {
    const WORDS: [&str; 16] = [
        "container",
        "kubelet",
        "raspberry",
        "overlay",
        "snapshot",
        "registry",
        "manifest",
        "layer",
        "pod",
        "node",
        "agent",
        "server",
        "image",
        "digest",
        "mirror",
        "cluster",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let layers = (0..LAYERS)
        .map(|i| {
            let mut files = Vec::new();
            for f in 0..10 {
                let mut data = Vec::with_capacity(LAYER_BYTES / 10 + 64);
                while data.len() < LAYER_BYTES / 10 {
                    let r = next();
                    if compressible {
                        data.extend_from_slice(WORDS[(r & 15) as usize].as_bytes());
                        data.push(if r & 0x300 == 0 { b'\n' } else { b' ' });
                        data.extend_from_slice(&(r >> 40).to_le_bytes()[..1]);
                    } else {
                        data.extend_from_slice(&r.to_le_bytes());
                    }
                }
                data.truncate(LAYER_BYTES / 10);
                files.push((format!("layer{i}/file{f}"), data));
            }
            let dir = format!("layer{i}");
            let mut entries = vec![Entry::Dir(&dir, 0o755)];
            for (p, d) in &files {
                entries.push(Entry::File(p, d.clone(), 0o644));
            }
            layer(&entries, Compression::Gzip)
        })
        .collect();
    image(layers, "amd64", None, false)
}

fn child_pull(reference: &str, store: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = reference.split('/').next().unwrap();
        let yaml = format!("mirrors:\n  \"{addr}\":\n    endpoint: [\"http://{addr}\"]\n");
        let mut cfg = r3s_images::ImageServiceConfig::new(store);
        cfg.registries = r3s_images::RegistriesConfig::from_yaml(&yaml).unwrap();
        cfg.registries.disable_default_endpoint = true;
        cfg.platform = r3s_images::Platform::parse("linux/amd64").unwrap();
        let svc = r3s_images::ImageService::open(cfg).unwrap();
        svc.pull(reference, &r3s_images::PullOptions::default())
            .await
            .unwrap();
    });
}
