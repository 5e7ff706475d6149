//! Item 4: pod start latency, `kubectl apply`-equivalent (a Pod created through the API) → phase
//! Running, with the image already present on the node, beside `runc run -d` of a bundle holding
//! the same busybox-static binary and command.
//!
//! r3s's figure includes everything a real start does: the API write, the agent's watch event, the
//! pod sandbox (network namespace, veth on the bridge, address from the node's range), the
//! libcontainer container and the status write back; runc's includes its own namespaces (network
//! included, as in `runc spec`'s default) but no networking setup and no API.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::cluster;
use crate::footprint::Live;
use crate::report::{Report, percentiles_ms};

pub const SEC: &str = "4. Pod start";

async fn r3s_once(
    pods: &Api<Pod>,
    name: &str,
    node: &str,
    image: &str,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    pods.create(
        &PostParams::default(),
        &cluster::sleeper(name, node, image)?,
    )
    .await?;
    let deadline = t0 + Duration::from_secs(120);
    let took = loop {
        if let Some(p) = pods.get_opt(name).await?
            && cluster::pod_running(&p)
        {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            bail!("pod {name} not Running after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    pods.delete(
        name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    // Wait until it is gone so runs do not overlap.
    let deadline = Instant::now() + Duration::from_secs(120);
    while pods.get_opt(name).await?.is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(took)
}

fn runc_bundle(dir: &Path) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep"))?;
    let st = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .status()
        .context("runc spec (package runc)")?;
    anyhow::ensure!(st.success(), "runc spec failed");
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["sleep", "86400"]);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(())
}

fn runc_once(bundle: &Path, root: &Path, id: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let st = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["run", "--detach", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let took = t0.elapsed();
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    anyhow::ensure!(st.success(), "runc run failed: {st}");
    Ok(took)
}

/// `tag` prefixes the runc container ids (and so their cgroups), for the outer process's sweep.
pub async fn run(
    r: &mut Report,
    live: &Live,
    dir: &Path,
    runs: usize,
    tag: &str,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(live.client.clone(), "default");
    let mut r3s = Vec::new();
    for i in 0..runs {
        r3s.push(
            r3s_once(
                &pods,
                &format!("start-{i}"),
                &live.server_node,
                &live.image.image,
            )
            .await?,
        );
    }
    let (p50, p99) = percentiles_ms(&mut r3s);
    r.add(
        SEC,
        &format!("r3s create → Running, p50 of {runs}"),
        p50,
        "ms",
        None,
        "server node (in-process agent), image present; polled every 10 ms",
    );
    r.add(
        SEC,
        &format!("r3s create → Running, p99 of {runs}"),
        p99,
        "ms",
        None,
        "",
    );
    let bundle = dir.join("runc-bundle");
    let state = dir.join("runc-state");
    if Command::new("runc").arg("--version").output().is_err() {
        r.skip(SEC, "runc is not installed (apt-get install runc)".into());
        return Ok(());
    }
    runc_bundle(&bundle)?;
    let mut rc = Vec::new();
    for i in 0..runs {
        rc.push(runc_once(&bundle, &state, &format!("{tag}-{i}"))?);
    }
    let (q50, q99) = percentiles_ms(&mut rc);
    r.add(
        SEC,
        &format!("runc run --detach, p50 of {runs}"),
        q50,
        "ms",
        None,
        "same busybox-static binary and command, no network setup, no API",
    );
    r.add(
        SEC,
        &format!("runc run --detach, p99 of {runs}"),
        q99,
        "ms",
        None,
        "",
    );
    r.add(SEC, "ratio r3s / runc (p50)", p50 / q50.max(0.001), "×", None,
        "the difference is the API round trips, the agent's watch, the pod sandbox and networking, and the status write");
    Ok(())
}
