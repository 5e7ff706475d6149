//! Hard links across layers, pulled from a real `docker-registry`: an upper layer hard-linking a
//! file of a lower layer gets the target copied up (content, owner, mode, mtime, xattrs, parent
//! directories' metadata) so the merged view has one file under two names, through overlayfs and
//! through the copy fallback, also when the store re-unpacks the snapshots later; a link to a file
//! a whiteout deleted, or an opaque directory hides, is rejected.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use oci_client::secrets::RegistryAuth;
use r3s_images::PullOptions;
use support::*;

const ANON: RegistryAuth = RegistryAuth::Anonymous;

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and buffer.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

fn overlay_listed() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("overlay"))
}

/// The merged view: each link is the same file as its target, with the lower file's metadata.
fn check_links(root: &Path) {
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(std::fs::read(root.join("etc/base.link")).unwrap(), b"base");
    assert_eq!(ino("etc/base"), ino("etc/base.link"));
    assert_eq!(std::fs::read(root.join("bin2/tool")).unwrap(), b"#!tool");
    assert_eq!(ino("opt/tool"), ino("bin2/tool"));
    let base = std::fs::metadata(root.join("etc/base.link")).unwrap();
    assert_eq!(
        (base.uid(), base.gid(), base.mode() & 0o7777, base.mtime()),
        (1000, 1001, 0o640, 1_700_000_000)
    );
    assert_eq!(base.nlink(), 2);
    assert_eq!(
        xattr(&root.join("etc/xa.link"), "user.r3s").as_deref(),
        Some(&b"v"[..])
    );
    // Lower files next to the copied-up ones are still visible (no opaque marker copied up).
    assert_eq!(std::fs::read(root.join("opt/other")).unwrap(), b"other");
    let opt = std::fs::metadata(root.join("opt")).unwrap();
    assert_eq!(opt.permissions().mode() & 0o7777, 0o711);
}

#[tokio::test]
async fn hard_links_into_lower_layers() {
    if !have_registry() || !have_root() || !require("overlayfs", overlay_listed()) {
        return;
    }
    let reg = Registry::start();
    let lower = layer(
        &[
            Entry::Dir("etc", 0o755),
            Entry::Owned("etc/base", b"base".to_vec(), 0o640, 1000, 1001),
            Entry::XattrFile("etc/xa", b"x".to_vec(), "user.r3s", b"v"),
            Entry::Dir("opt", 0o711),
            Entry::File("opt/tool", b"#!tool".to_vec(), 0o750),
            Entry::File("opt/other", b"other".to_vec(), 0o644),
        ],
        Compression::Gzip,
    );
    // No entry for etc/ or opt/ here: the copy-up must create them like the lower's.
    let upper = layer(
        &[
            Entry::Hardlink("etc/base.link", "etc/base"),
            Entry::Hardlink("etc/xa.link", "etc/xa"),
            Entry::Dir("bin2", 0o755),
            Entry::Hardlink("bin2/tool", "opt/tool"),
        ],
        Compression::Zstd,
    );
    let img = image(vec![lower, upper], "amd64", None, false);
    reg.push("links", "1", &img, &ANON).await;
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    let name = format!("{}/links:1", reg.addr);
    let rec = svc.pull(&name, &PullOptions::default()).await.unwrap();

    // The upper snapshot holds the copied-up targets, hard-linked to the new names.
    let up = svc
        .root()
        .join("snapshots")
        .join(rec.layers[1].diff_id.hex());
    let m = std::fs::metadata(up.join("etc/base")).unwrap();
    assert_eq!(
        m.ino(),
        std::fs::metadata(up.join("etc/base.link")).unwrap().ino()
    );
    assert_eq!(
        std::fs::metadata(up.join("opt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o711
    );
    assert!(
        !up.join("opt/other").exists(),
        "only link targets are copied up"
    );

    let cdir = tmp.path().join("c");
    let _guard = RootfsGuard {
        svc: svc.clone(),
        dir: cdir.clone(),
    };
    let mount = svc.prepare_rootfs(&name, &cdir).await.unwrap();
    check_links(&mount.target);
    svc.release_rootfs(&cdir).await.unwrap();

    let copied = svc
        .prepare_rootfs_copy(&name, &tmp.path().join("c2"))
        .await
        .unwrap();
    check_links(&copied);
    svc.release_rootfs(&tmp.path().join("c2")).await.unwrap();

    // Snapshots lost (e.g. removed by hand): re-unpacked in order from the blobs, same result.
    for l in &rec.layers {
        std::fs::remove_dir_all(svc.root().join("snapshots").join(l.diff_id.hex())).unwrap();
    }
    let mount = svc.prepare_rootfs(&name, &cdir).await.unwrap();
    check_links(&mount.target);
    svc.release_rootfs(&cdir).await.unwrap();
}

#[tokio::test]
async fn hard_links_to_deleted_or_hidden_files_rejected() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let base = layer(
        &[
            Entry::Dir("etc", 0o755),
            Entry::File("etc/gone", b"g".to_vec(), 0o644),
            Entry::Dir("d", 0o755),
            Entry::File("d/hidden", b"h".to_vec(), 0o644),
        ],
        Compression::Gzip,
    );
    let deletes = layer(
        &[
            Entry::Whiteout("etc/gone"),
            Entry::Opaque("d"),
            Entry::File("d/new", b"n".to_vec(), 0o644),
        ],
        Compression::Gzip,
    );
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path(), &reg, "linux/amd64");
    for (tag, target) in [("wh", "etc/gone"), ("opq", "d/hidden"), ("none", "nowhere")] {
        let link = layer(&[Entry::Hardlink("x", target)], Compression::Gzip);
        let base = layer_copy(&base);
        let img = image(vec![base, layer_copy(&deletes), link], "amd64", None, false);
        reg.push("badlinks", tag, &img, &ANON).await;
        let err = svc
            .pull(
                &format!("{}/badlinks:{tag}", reg.addr),
                &PullOptions::default(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hard link target") && err.contains(target),
            "{tag}: {err}"
        );
    }
    assert!(svc.list().unwrap().is_empty());
}

fn layer_copy(l: &Layer) -> Layer {
    Layer {
        data: l.data.clone(),
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        media_type: l.media_type,
    }
}
