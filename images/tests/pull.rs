//! Pulls from a real `docker-registry` on 127.0.0.1: single-arch busybox run through an overlay
//! mount, multi-arch platform choice, gzip/zstd/uncompressed layers, whiteouts and opaque dirs,
//! corrupted blobs, unknown images, basic auth, progress, GC.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use oci_client::secrets::RegistryAuth;
use r3s_images::{Digest, Keyring, Progress, PullEvent, PullOptions};
use support::*;

const ANON: RegistryAuth = RegistryAuth::Anonymous;

fn opts() -> PullOptions {
    PullOptions::default()
}

#[tokio::test]
async fn single_arch_busybox_runs_from_overlay() {
    if !have_registry() || !have_busybox() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let img = image(vec![busybox_layer(Compression::Gzip)], "amd64", None, false);
    reg.push("busybox", "1", &img, &ANON).await;

    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let name = format!("{}/busybox:1", reg.addr);
    let rec = svc.pull(&name, &opts()).await.unwrap();
    assert_eq!(rec.name, name);
    assert_eq!(rec.manifest.as_str(), img.manifest_digest);
    assert_eq!(rec.target, rec.manifest);
    assert_eq!(rec.layers[0].diff_id.as_str(), img.layers[0].diff_id);
    let blob = svc
        .root()
        .join("blobs/sha256")
        .join(&img.layers[0].digest[7..]);
    assert_eq!(std::fs::read(blob).unwrap(), img.layers[0].data);

    let info = svc.inspect(&name).unwrap();
    let cmd = info
        .config
        .config()
        .as_ref()
        .and_then(|c| c.cmd().clone())
        .unwrap();
    assert_eq!(cmd, ["sh", "-c", "echo hello from image"]);

    let cdir = tmp.path().join("c1");
    let _guard = RootfsGuard {
        svc: svc.clone(),
        dir: cdir.clone(),
    };
    assert_eq!(svc.get(&name).unwrap().unwrap().last_used, 0);
    let m = svc.prepare_rootfs(&name, &cdir).await.unwrap();
    assert_eq!(m.target, cdir.join("rootfs"));
    let used = svc.get(&name).unwrap().unwrap();
    assert!(used.last_used >= used.created, "{used:?}");
    assert_eq!(
        used.repo_digest(),
        format!("{}/busybox@{}", reg.addr, img.manifest_digest)
    );
    let out = std::process::Command::new("chroot")
        .arg(&m.target)
        .args([
            "/bin/sh",
            "-c",
            "echo hello from image > /greeting; cat /greeting",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from image\n");
    // The write landed in the container's upper dir, not in the shared snapshot.
    assert!(cdir.join("upper/greeting").exists());
    let snap = svc
        .root()
        .join("snapshots")
        .join(&img.layers[0].diff_id[7..]);
    assert!(!snap.join("greeting").exists());
    assert!(
        std::fs::symlink_metadata(snap.join("bin/sh"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A second pull of the same image downloads nothing.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let again = PullOptions {
        progress: Progress::new(tx),
        ..opts()
    };
    svc.pull(&name, &again).await.unwrap();
    let mut done = None;
    while let Ok(e) = rx.try_recv() {
        if let PullEvent::Done { downloaded, .. } = e {
            done = Some(downloaded);
        }
    }
    assert_eq!(done, Some(0));

    svc.release_rootfs(&cdir).await.unwrap();
    assert!(!cdir.join("rootfs").exists());
}

#[tokio::test]
async fn multi_arch_index_selects_platform() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let amd = image(
        vec![marker_layer("arch", "amd64", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    let arm64 = image(
        vec![marker_layer("arch", "arm64", Compression::Gzip)],
        "arm64",
        Some("v8"),
        false,
    );
    let armv7 = image(
        vec![marker_layer("arch", "armv7", Compression::Gzip)],
        "arm",
        Some("v7"),
        true,
    );
    let armv6 = image(
        vec![marker_layer("arch", "armv6", Compression::Gzip)],
        "arm",
        Some("v6"),
        false,
    );
    let idx = index(&[
        (&amd, "amd64", None),
        (&armv6, "arm", Some("v6")),
        (&armv7, "arm", Some("v7")),
        (&arm64, "arm64", None),
    ]);
    reg.push_index("multi", "1", &[&amd, &arm64, &armv7, &armv6], &idx, &ANON)
        .await;
    let name = format!("{}/multi:1", reg.addr);

    for (platform, want, img) in [
        ("linux/amd64", "amd64", &amd),
        ("linux/arm64", "arm64", &arm64),
        ("linux/arm/v7", "armv7", &armv7),
        ("linux/arm/v6", "armv6", &armv6),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let svc = service(tmp.path(), &reg, platform);
        let rec = svc.pull(&name, &opts()).await.unwrap();
        assert_eq!(rec.manifest.as_str(), img.manifest_digest, "{platform}");
        assert_eq!(
            rec.index.as_ref().map(Digest::as_str),
            Some(support::sha256(&idx).as_str())
        );
        assert_eq!(rec.target, *rec.index.as_ref().unwrap());
        let snap = svc
            .root()
            .join("snapshots")
            .join(rec.layers[0].diff_id.hex());
        assert_eq!(
            std::fs::read_to_string(snap.join("etc/arch")).unwrap(),
            want,
            "{platform}"
        );
    }
    // The same images behind a Docker manifest list (schema 2 list, Docker manifests).
    let amd_d = image(
        vec![marker_layer("arch", "amd64-docker", Compression::Gzip)],
        "amd64",
        None,
        true,
    );
    let arm_d = image(
        vec![marker_layer("arch", "arm64-docker", Compression::Gzip)],
        "arm64",
        None,
        true,
    );
    let list = docker_list(&[(&amd_d, "amd64", None), (&arm_d, "arm64", Some("v8"))]);
    reg.push_index("multi", "docker", &[&amd_d, &arm_d], &list, &ANON)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/arm64");
    let rec = svc
        .pull(&format!("{}/multi:docker", reg.addr), &opts())
        .await
        .unwrap();
    assert_eq!(rec.manifest.as_str(), arm_d.manifest_digest);
    assert_eq!(
        rec.index.as_ref().map(Digest::as_str),
        Some(support::sha256(&list).as_str())
    );

    // A platform the index lacks: the error names what is available.
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/riscv64");
    let err = svc.pull(&name, &opts()).await.unwrap_err().to_string();
    assert!(
        err.contains("linux/riscv64") && err.contains("linux/arm/v7"),
        "{err}"
    );
    // Per-pull override of the platform.
    let o = PullOptions {
        platform: Some(r3s_images::Platform::parse("linux/arm64").unwrap()),
        ..opts()
    };
    assert_eq!(
        svc.pull(&name, &o).await.unwrap().manifest.as_str(),
        arm64.manifest_digest
    );
}

#[tokio::test]
async fn gzip_zstd_and_plain_layers() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let img = image(
        vec![
            marker_layer("one", "gzip", Compression::Gzip),
            marker_layer("two", "zstd", Compression::Zstd),
            marker_layer("three", "plain", Compression::None),
        ],
        "amd64",
        None,
        false,
    );
    reg.push("comp", "1", &img, &ANON).await;
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let rec = svc
        .pull(&format!("{}/comp:1", reg.addr), &opts())
        .await
        .unwrap();
    assert_eq!(rec.layers.len(), 3);
    for (l, (file, content)) in
        rec.layers
            .iter()
            .zip([("one", "gzip"), ("two", "zstd"), ("three", "plain")])
    {
        let p = svc
            .root()
            .join("snapshots")
            .join(l.diff_id.hex())
            .join("etc")
            .join(file);
        assert_eq!(std::fs::read_to_string(p).unwrap(), content);
    }
}

#[tokio::test]
async fn whiteouts_opaque_dirs_and_special_files_through_overlay() {
    if !have_registry() || !have_root() || !require("overlayfs", overlay_listed()) {
        return;
    }
    let reg = Registry::start();
    let lower = layer(
        &[
            Entry::Dir("etc", 0o755),
            Entry::File("etc/keep", b"keep".to_vec(), 0o644),
            Entry::File("etc/gone", b"gone".to_vec(), 0o644),
            Entry::Dir("data", 0o755),
            Entry::File("data/old1", b"1".to_vec(), 0o644),
            Entry::File("data/old2", b"2".to_vec(), 0o644),
            Entry::Owned("etc/owned", b"o".to_vec(), 0o4750, 1234, 5678),
            Entry::Hardlink("etc/keep-link", "etc/keep"),
            Entry::Symlink("etc/sym", "keep"),
            Entry::CharDev("null", 1, 3),
            Entry::Fifo("fifo"),
            Entry::XattrFile("etc/xattr", b"x".to_vec(), "user.r3s", b"hello"),
        ],
        Compression::Gzip,
    );
    let upper = layer(
        &[
            Entry::Whiteout("etc/gone"),
            Entry::Opaque("data"),
            Entry::File("data/new", b"new".to_vec(), 0o600),
        ],
        Compression::Zstd,
    );
    let img = image(vec![lower, upper], "amd64", None, true);
    reg.push("wh", "1", &img, &ANON).await;
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let name = format!("{}/wh:1", reg.addr);
    let rec = svc.pull(&name, &opts()).await.unwrap();

    // On disk: overlay's whiteout format in the upper snapshot.
    let up = svc
        .root()
        .join("snapshots")
        .join(rec.layers[1].diff_id.hex());
    let wh = std::fs::symlink_metadata(up.join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr(&up.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );

    let cdir = tmp.path().join("c");
    let _guard = RootfsGuard {
        svc: svc.clone(),
        dir: cdir.clone(),
    };
    let m = svc.prepare_rootfs(&name, &cdir).await.unwrap();
    check_merged_view(&m.target);
    svc.release_rootfs(&cdir).await.unwrap();

    // The copy fallback (no overlayfs) gives the same view.
    let cdir2 = tmp.path().join("c2");
    let copied = svc.prepare_rootfs_copy(&name, &cdir2).await.unwrap();
    check_merged_view(&copied);
    assert!(xattr(&copied.join("data"), "trusted.overlay.opaque").is_none());
    svc.release_rootfs(&cdir2).await.unwrap();
    assert!(!copied.exists());
}

/// What the whiteout test image must look like once its layers are merged.
fn check_merged_view(root: &Path) {
    assert_eq!(
        xattr(&root.join("etc/xattr"), "user.r3s").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/keep")).unwrap(),
        "keep"
    );
    assert!(
        !root.join("etc/gone").exists(),
        "whiteout hides the lower file"
    );
    let mut data: Vec<String> = std::fs::read_dir(root.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    data.sort();
    assert_eq!(
        data,
        ["new"],
        "opaque dir hides the lower directory's entries"
    );
    let owned = std::fs::metadata(root.join("etc/owned")).unwrap();
    assert_eq!(
        (
            owned.uid(),
            owned.gid(),
            owned.permissions().mode() & 0o7777
        ),
        (1234, 5678, 0o4750)
    );
    let keep = std::fs::metadata(root.join("etc/keep")).unwrap();
    assert_eq!(
        keep.ino(),
        std::fs::metadata(root.join("etc/keep-link")).unwrap().ino()
    );
    assert_eq!(
        std::fs::read_link(root.join("etc/sym")).unwrap(),
        Path::new("keep")
    );
    let null = std::fs::metadata(root.join("null")).unwrap();
    assert!(null.file_type().is_char_device() && null.rdev() == libc::makedev(1, 3));
    assert!(
        std::fs::metadata(root.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

fn overlay_listed() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("overlay"))
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and buffer.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[tokio::test]
async fn path_traversal_layer_rejected() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    for (i, bad) in [
        layer(
            &[Entry::RawFile("../../escape", b"x".to_vec())],
            Compression::Gzip,
        ),
        layer(
            &[
                Entry::Symlink("link", "/tmp"),
                Entry::File("link/r3s-escape", b"x".to_vec(), 0o644),
            ],
            Compression::Gzip,
        ),
        // A hard link to a file outside the snapshot.
        layer(
            &[Entry::Hardlink("passwd", "../../../../etc/passwd")],
            Compression::Gzip,
        ),
        // A hard link through a symlinked directory.
        layer(
            &[
                Entry::Symlink("etc", "/etc"),
                Entry::Hardlink("passwd", "etc/passwd"),
            ],
            Compression::Gzip,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let img = image(vec![bad], "amd64", None, false);
        reg.push("trav", &format!("{i}"), &img, &ANON).await;
        let svc = service(&tmp.path().join(format!("s{i}")), &reg, "linux/amd64");
        let err = svc
            .pull(&format!("{}/trav:{i}", reg.addr), &opts())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("escapes the snapshot"), "{err}");
        assert!(!Path::new("/tmp/r3s-escape").exists());
        let snaps: Vec<_> = std::fs::read_dir(svc.root().join("snapshots"))
            .unwrap()
            .collect();
        assert!(snaps.is_empty(), "no snapshot left behind");
    }
}

#[tokio::test]
async fn corrupted_blob_is_rejected_and_discarded() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let img = image(
        vec![marker_layer("x", "original content", Compression::None)],
        "amd64",
        None,
        false,
    );
    reg.push("bad", "1", &img, &ANON).await;
    // Flip one byte of the stored layer (same size, different digest).
    let f = reg.blob_file(&img.layers[0].digest);
    let mut data = std::fs::read(&f).unwrap();
    let pos = data.windows(8).position(|w| w == b"original").unwrap();
    data[pos] = b'O';
    std::fs::write(&f, &data).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let err = svc
        .pull(&format!("{}/bad:1", reg.addr), &opts())
        .await
        .unwrap_err()
        .to_string();
    eprintln!("corrupted blob error: {err}");
    assert!(
        err.contains("digest mismatch") && err.contains(&img.layers[0].digest),
        "{err}"
    );
    let blob = svc
        .root()
        .join("blobs/sha256")
        .join(&img.layers[0].digest[7..]);
    assert!(
        !blob.exists(),
        "bad blob must not be visible under its digest"
    );
    assert_eq!(
        std::fs::read_dir(svc.root().join("ingest"))
            .unwrap()
            .count(),
        0,
        "temp file removed"
    );
    assert!(svc.list().unwrap().is_empty());
}

#[tokio::test]
async fn unknown_image_reports_registry_error() {
    if !have_registry() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let err = svc
        .pull(&format!("{}/nope:1", reg.addr), &opts())
        .await
        .unwrap_err()
        .to_string();
    eprintln!("unknown image error: {err}");
    // distribution's error code/message for an unknown repository.
    assert!(
        err.contains("NAME_UNKNOWN") || err.contains("MANIFEST_UNKNOWN") || err.contains("unknown"),
        "{err}"
    );
    assert!(err.contains(&format!("http://{}/v2", reg.addr)), "{err}");
}

#[tokio::test]
async fn basic_auth_from_pull_secret_and_registries_yaml() {
    if !have_registry()
        || !have_root()
        || !require(
            "htpasswd (apache2-utils)",
            Path::new("/usr/bin/htpasswd").exists(),
        )
    {
        return;
    }
    let reg = Registry::start_with(RegistryOpts {
        basic: Some(("r3s".into(), "s3cret".into())),
        ..Default::default()
    });
    let img = image(
        vec![marker_layer("a", "auth", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    reg.push(
        "private",
        "1",
        &img,
        &RegistryAuth::Basic("r3s".into(), "s3cret".into()),
    )
    .await;
    let name = format!("{}/private:1", reg.addr);

    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let err = svc.pull(&name, &opts()).await.unwrap_err().to_string();
    assert!(
        err.to_lowercase().contains("auth"),
        "anonymous must fail: {err}"
    );

    // imagePullSecret (.dockerconfigjson) credentials.
    let json = format!(
        r#"{{"auths":{{"{}":{{"username":"r3s","password":"s3cret"}}}}}}"#,
        reg.addr
    );
    let keyring = Keyring::from_docker_configs([json.as_bytes()]).unwrap();
    let rec = svc
        .pull(&name, &PullOptions { keyring, ..opts() })
        .await
        .unwrap();
    assert_eq!(rec.manifest.as_str(), img.manifest_digest);

    // registries.yaml credentials (base64 `auth` form), fresh store.
    let yaml = format!(
        "mirrors:\n  \"{0}\":\n    endpoint: [\"http://{0}\"]\nconfigs:\n  \"{0}\":\n    auth:\n      auth: cjNzOnMzY3JldA==\n",
        reg.addr
    );
    let svc2 = service_with_yaml(&tmp.path().join("two"), &yaml, "linux/amd64");
    svc2.pull(&name, &opts()).await.unwrap();
}

#[tokio::test]
async fn progress_events_per_layer() {
    if !have_registry() || !have_busybox() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let img = image(
        vec![
            busybox_layer(Compression::None),
            marker_layer("m", "m", Compression::Gzip),
        ],
        "amd64",
        None,
        false,
    );
    reg.push("prog", "1", &img, &ANON).await;
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    svc.pull(
        &format!("{}/prog:1", reg.addr),
        &PullOptions {
            progress: Progress::new(tx),
            ..opts()
        },
    )
    .await
    .unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert!(
        matches!(events.first(), Some(PullEvent::Resolved { layers, .. }) if layers.len() == 2)
    );
    let big = &img.layers[0];
    let steps: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            PullEvent::LayerProgress {
                digest,
                done,
                total,
            } if digest.as_str() == big.digest => Some((*done, *total)),
            _ => None,
        })
        .collect();
    assert!(
        steps.len() > 2,
        "several progress steps for a 1+ MB layer: {steps:?}"
    );
    assert!(steps.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(
        steps.last(),
        Some(&(big.data.len() as u64, big.data.len() as u64))
    );
    let unpacked = events
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerUnpacked { cached: false, .. }))
        .count();
    assert_eq!(unpacked, 2);
    match events.last() {
        Some(PullEvent::Done {
            downloaded, total, ..
        }) => {
            assert_eq!(
                *downloaded,
                img.layers.iter().map(|l| l.data.len() as u64).sum::<u64>()
                    + img.config.len() as u64
            );
            assert_eq!(total, downloaded);
        }
        other => panic!("last event {other:?}"),
    }
}

#[tokio::test]
async fn gc_removes_exactly_unreferenced_blobs_and_snapshots() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let shared = || marker_layer("shared", "shared", Compression::Gzip);
    let a = image(
        vec![shared(), marker_layer("a", "a", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    let b = image(
        vec![shared(), marker_layer("b", "b", Compression::Zstd)],
        "amd64",
        None,
        false,
    );
    reg.push("a", "1", &a, &ANON).await;
    reg.push("b", "1", &b, &ANON).await;
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let (na, nb) = (format!("{}/a:1", reg.addr), format!("{}/b:1", reg.addr));
    svc.pull(&na, &opts()).await.unwrap();
    let rb = svc.pull(&nb, &opts()).await.unwrap();
    assert_eq!(svc.list().unwrap().len(), 2);
    let du = svc.disk_usage().await.unwrap();
    assert_eq!(
        (du.images, du.blobs, du.snapshots, du.reclaimable_bytes),
        (2, 7, 3, 0),
        "{du:?}"
    );

    assert_eq!(
        svc.gc().await.unwrap(),
        Default::default(),
        "nothing to collect"
    );
    // Lookup and removal by image ID (config digest), as CRI does.
    let ra = svc.get(&a.config_digest).unwrap().unwrap();
    assert_eq!(ra.name, na);
    assert!(svc.remove(&a.config_digest).await.unwrap());
    assert!(!svc.remove(&na).await.unwrap());
    let du = svc.disk_usage().await.unwrap();
    assert!(du.reclaimable_bytes > 0);

    let rep = svc.gc().await.unwrap();
    let mut want_blobs = vec![
        Digest::parse(&a.manifest_digest).unwrap(),
        Digest::parse(&a.config_digest).unwrap(),
        Digest::parse(&a.layers[1].digest).unwrap(),
    ];
    want_blobs.sort();
    assert_eq!(rep.blobs_removed, want_blobs);
    assert_eq!(
        rep.snapshots_removed,
        vec![Digest::parse(&a.layers[1].diff_id).unwrap()]
    );
    assert_eq!(rep.bytes_freed, du.reclaimable_bytes);
    // b is intact (shared layer kept) and still mounts.
    for l in &rb.layers {
        assert!(
            svc.root()
                .join("blobs/sha256")
                .join(l.digest.hex())
                .exists()
        );
        assert!(svc.root().join("snapshots").join(l.diff_id.hex()).exists());
    }
    let du = svc.disk_usage().await.unwrap();
    assert_eq!(
        (du.images, du.blobs, du.snapshots, du.reclaimable_bytes),
        (1, 4, 2, 0)
    );

    // A leased snapshot (prepared rootfs) survives removal of its image until released.
    if overlay_listed() {
        let cdir = tmp.path().join("c");
        let _guard = RootfsGuard {
            svc: svc.clone(),
            dir: cdir.clone(),
        };
        svc.prepare_rootfs(&nb, &cdir).await.unwrap();
        svc.remove(&nb).await.unwrap();
        let rep = svc.gc().await.unwrap();
        assert_eq!(rep.blobs_removed.len(), 4);
        assert!(rep.snapshots_removed.is_empty(), "leased snapshots kept");
        assert!(cdir.join("rootfs/etc/b").exists());
        svc.release_rootfs(&cdir).await.unwrap();
        assert_eq!(svc.gc().await.unwrap().snapshots_removed.len(), 2);
    }
}

#[tokio::test]
async fn mirror_with_rewrite_and_endpoint_fallback() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let img = image(
        vec![marker_layer("m", "mirrored", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    // The mirror stores rancher/* images under mirrorproject/rancher-images/*.
    reg.push("mirrorproject/rancher-images/pause", "3.6", &img, &ANON)
        .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "mirrors:\n  docker.io:\n    endpoint:\n      - \"http://127.0.0.1:{dead}\"\n      - \"http://{}\"\n    rewrite:\n      \"^rancher/(.*)\": \"mirrorproject/rancher-images/$1\"\n",
        reg.addr
    );
    let tmp = tempfile::tempdir().unwrap();
    let svc = service_with_yaml(tmp.path(), &yaml, "linux/amd64");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let rec = svc
        .pull(
            "rancher/pause:3.6",
            &PullOptions {
                progress: Progress::new(tx),
                ..opts()
            },
        )
        .await
        .unwrap();
    // Recorded under the original name, content from the mirror.
    assert_eq!(rec.name, "docker.io/rancher/pause:3.6");
    assert_eq!(rec.manifest.as_str(), img.manifest_digest);
    assert!(svc.get("rancher/pause:3.6").unwrap().is_some());
    let mut failed = Vec::new();
    let mut resolved = None;
    while let Ok(e) = rx.try_recv() {
        match e {
            PullEvent::EndpointFailed { endpoint, .. } => failed.push(endpoint),
            PullEvent::Resolved { endpoint, .. } => resolved = Some(endpoint),
            _ => {}
        }
    }
    assert_eq!(failed, [format!("http://127.0.0.1:{dead}/v2")]);
    assert_eq!(resolved, Some(format!("http://{}/v2", reg.addr)));

    // Without a matching rewrite the mirror has no such repository: every endpoint's error is reported.
    let err = svc
        .pull("library/other:1", &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{dead}")) && err.contains(&reg.addr),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_and_gc_are_safe() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let img = image(
        (0..4)
            .map(|i| {
                marker_layer(
                    &format!("f{i}"),
                    &"x".repeat(100_000 + i),
                    Compression::Gzip,
                )
            })
            .collect(),
        "amd64",
        None,
        false,
    );
    reg.push("conc", "1", &img, &ANON).await;
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let name = format!("{}/conc:1", reg.addr);
    let o = opts();
    let (a, b, gc, c) = tokio::join!(
        svc.pull(&name, &o),
        svc.pull(&name, &o),
        svc.gc(),
        svc.pull(&name, &o)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    gc.unwrap();
    assert!(a == b || a.created != b.created, "same content");
    assert_eq!(
        (a.manifest.clone(), a.layers.clone()),
        (c.manifest.clone(), c.layers.clone())
    );
    // Everything the record needs is there; nothing stray is left to collect.
    assert_eq!(svc.gc().await.unwrap(), Default::default());
    for l in &a.layers {
        assert!(
            svc.root()
                .join("blobs/sha256")
                .join(l.digest.hex())
                .exists()
        );
        assert!(svc.root().join("snapshots").join(l.diff_id.hex()).exists());
    }
    let leftovers: Vec<_> = std::fs::read_dir(svc.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read_dir(svc.root().join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn interrupted_download_resumes_with_range_requests() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let img = image(vec![random_layer(1 << 20, 7)], "amd64", None, false);
    reg.push("flaky", "1", &img, &ANON).await;
    let name = format!("{}/flaky:1", reg.addr);
    let mirror = |proxy: &CutProxy| {
        format!(
            "mirrors:\n  \"{}\":\n    endpoint: [\"http://{}\"]\n",
            reg.addr, proxy.addr
        )
    };

    // Two cuts: resumed twice from the byte where each connection broke.
    let proxy = CutProxy::start(&reg.addr, &img.layers[0].digest, 300_000, 2);
    let tmp = tempfile::tempdir().unwrap();
    let svc = service_with_yaml(&tmp.path().join("a"), &mirror(&proxy), "linux/amd64");
    let rec = svc.pull(&name, &opts()).await.unwrap();
    assert_eq!(proxy.ranges.load(std::sync::atomic::Ordering::SeqCst), 2);
    let blob = svc
        .root()
        .join("blobs/sha256")
        .join(rec.layers[0].digest.hex());
    assert_eq!(std::fs::read(blob).unwrap(), img.layers[0].data);

    // A link that always breaks: the pull gives up after a bounded number of resumes, cleanly.
    let proxy = CutProxy::start(&reg.addr, &img.layers[0].digest, 100_000, usize::MAX);
    let svc = service_with_yaml(&tmp.path().join("b"), &mirror(&proxy), "linux/amd64");
    let err = svc.pull(&name, &opts()).await.unwrap_err().to_string();
    eprintln!("flaky link error: {err}");
    assert!(err.contains(&proxy.addr), "{err}");
    assert_eq!(proxy.ranges.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(
        !svc.root()
            .join("blobs/sha256")
            .join(&img.layers[0].digest[7..])
            .exists()
    );
    assert_eq!(
        std::fs::read_dir(svc.root().join("ingest"))
            .unwrap()
            .count(),
        0
    );
    assert!(svc.list().unwrap().is_empty());
}

#[tokio::test]
async fn prune_removes_least_recently_used_unused_images() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let mut names = Vec::new();
    for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
        let img = image(
            vec![random_layer(200_000, 2 * i as u64 + 11)],
            "amd64",
            None,
            false,
        );
        reg.push(&format!("prune/{n}"), "1", &img, &ANON).await;
        let name = format!("{}/prune/{n}:1", reg.addr);
        svc.pull(&name, &opts()).await.unwrap();
        names.push(name);
    }
    // `a` is in use by a container.
    let cdir = tmp.path().join("ca");
    svc.prepare_rootfs_copy(&names[0], &cdir).await.unwrap();

    // Everything is younger than an hour: nothing may go.
    let (removed, _) = svc
        .prune(0, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(removed.is_empty());

    // Ask for just under the current size: exactly one unused image goes (b before c on a tie).
    let du = svc.disk_usage().await.unwrap();
    let (removed, rep) = svc
        .prune(
            du.blob_bytes + du.snapshot_bytes - 1,
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(removed, [names[1].clone()]);
    assert_eq!(rep.snapshots_removed.len(), 1);

    // Down to nothing: the in-use image stays.
    let (removed, _) = svc.prune(0, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(removed, [names[2].clone()]);
    let left: Vec<String> = svc.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(left, [names[0].clone()]);
    svc.release_rootfs(&cdir).await.unwrap();
    let (removed, _) = svc.prune(0, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(removed, [names[0].clone()]);
    let du = svc.disk_usage().await.unwrap();
    assert_eq!((du.images, du.blobs, du.snapshots), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_store_agent_and_cli() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let img = image(
        (0..3).map(|i| random_layer(300_000, 2 * i + 41)).collect(),
        "amd64",
        None,
        false,
    );
    reg.push("two", "1", &img, &ANON).await;
    let tmp = tempfile::tempdir().unwrap();
    // The agent's handle and an operator CLI's handle (as a second process would open it).
    let agent = service(tmp.path(), &reg, "linux/amd64");
    let cli = service(tmp.path(), &reg, "linux/amd64");
    let name = format!("{}/two:1", reg.addr);
    let o = opts();
    let (pulled, gc1, gc2) = tokio::join!(agent.pull(&name, &o), cli.gc(), cli.gc());
    let rec = pulled.unwrap();
    gc1.unwrap();
    gc2.unwrap();
    // The CLI's GC never took the agent's in-flight blobs; the CLI sees the image.
    assert_eq!(cli.get(&name).unwrap().unwrap(), rec);
    assert_eq!(cli.gc().await.unwrap(), Default::default());
    for l in &rec.layers {
        assert!(
            agent
                .root()
                .join("blobs/sha256")
                .join(l.digest.hex())
                .exists()
        );
    }
    assert!(cli.remove(&name).await.unwrap());
    assert_eq!(agent.gc().await.unwrap().blobs_removed.len(), 5);
}
