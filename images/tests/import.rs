//! Air-gap import from a directory: an OCI image-layout tarball (.tar), a multi-arch OCI layout
//! (.tar.zst), a legacy `docker save` tarball (.tar.gz, with a symlinked duplicate layer), a corrupt
//! tarball reported and skipped; a second run skips everything without re-importing (unchanged
//! files are not even read); an image removed since is imported again.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;

use support::*;

fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn add_blob(b: &mut tar::Builder<Vec<u8>>, digest: &str, data: &[u8]) {
    add(b, &format!("blobs/sha256/{}", &digest[7..]), data);
}

/// OCI layout with `refs` = (name, manifest-or-index digest, size, media type).
fn oci_layout(
    imgs: &[&Image],
    extra: &[(&str, &[u8])],
    refs: &[(&str, &str, usize, &str)],
) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for img in imgs {
        for l in &img.layers {
            add_blob(&mut b, &l.digest, &l.data);
        }
        add_blob(&mut b, &img.config_digest, &img.config);
        add_blob(&mut b, &img.manifest_digest, &img.manifest);
    }
    for (d, data) in extra {
        add_blob(&mut b, d, data);
    }
    let manifests: Vec<_> = refs
        .iter()
        .map(|(name, d, size, mt)| {
            serde_json::json!({"mediaType": mt, "digest": d, "size": size,
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"}})
        })
        .collect();
    let index =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap();
    add(&mut b, "index.json", &index);
    b.into_inner().unwrap()
}

/// Legacy `docker save`: uncompressed `<id>/layer.tar`, the second image's shared layer as a symlink.
fn docker_save(a: &Image, a_tag: &str, b_img: &Image, b_tag: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut manifest = Vec::new();
    for (n, (img, tag)) in [(a, a_tag), (b_img, b_tag)].into_iter().enumerate() {
        let cfg = format!("{}.json", &img.config_digest[7..]);
        add(&mut b, &cfg, &img.config);
        let mut layers = Vec::new();
        for (i, l) in img.layers.iter().enumerate() {
            let id = format!("img{n}layer{i}");
            if n == 1 && i == 0 {
                // Same content as image 0's first layer: docker writes a symlink.
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, format!("{id}/layer.tar"), "../img0layer0/layer.tar")
                    .unwrap();
            } else {
                add(&mut b, &format!("{id}/layer.tar"), &l.data);
            }
            layers.push(format!("{id}/layer.tar"));
        }
        manifest.push(serde_json::json!({"Config": cfg, "RepoTags": [tag], "Layers": layers}));
    }
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn imports_oci_and_docker_tarballs_once() {
    if !have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("airgap");
    std::fs::create_dir(&dir).unwrap();

    // 1. OCI layout, single image, uncompressed tarball.
    let one = image(
        vec![marker_layer("who", "oci", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    let tar1 = oci_layout(
        &[&one],
        &[],
        &[(
            "registry.local/oci/one:1",
            &one.manifest_digest,
            one.manifest.len(),
            one.manifest_media_type,
        )],
    );
    std::fs::write(dir.join("a-oci.tar"), &tar1).unwrap();

    // 2. OCI layout with a multi-arch index, zstd-compressed tarball.
    let amd = image(
        vec![marker_layer("arch", "amd64", Compression::Zstd)],
        "amd64",
        None,
        false,
    );
    let arm = image(
        vec![marker_layer("arch", "arm64", Compression::Zstd)],
        "arm64",
        None,
        false,
    );
    let idx = index(&[(&amd, "amd64", None), (&arm, "arm64", None)]);
    let idx_d = sha256(&idx);
    let tar2 = oci_layout(
        &[&amd, &arm],
        &[(&idx_d, &idx)],
        &[(
            "multi",
            &idx_d,
            idx.len(),
            "application/vnd.oci.image.index.v1+json",
        )],
    );
    std::fs::write(
        dir.join("b-multi.tar.zst"),
        zstd::encode_all(&tar2[..], 3).unwrap(),
    )
    .unwrap();

    // 3. docker save (legacy layout), gzip-compressed tarball.
    let shared = || marker_layer("base", "base", Compression::None);
    let d1 = image(
        vec![shared(), marker_layer("who", "docker1", Compression::None)],
        "amd64",
        None,
        true,
    );
    let d2 = image(
        vec![shared(), marker_layer("who", "docker2", Compression::None)],
        "amd64",
        None,
        true,
    );
    std::fs::write(
        dir.join("c-docker.tar.gz"),
        gz(&docker_save(&d1, "app:v1", &d2, "example.com/team/app:v2")),
    )
    .unwrap();

    // 4. Corrupt: a truncated gzip tarball; 5. ignored: not a tarball name.
    let good = gz(&tar1);
    std::fs::write(dir.join("d-corrupt.tar.gz"), &good[..good.len() / 2]).unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();

    let mut cfg = r3s_images::ImageServiceConfig::new(tmp.path().join("store"));
    cfg.platform = r3s_images::Platform::parse("linux/arm64").unwrap();
    let svc = r3s_images::ImageService::open(cfg).unwrap();
    let rep = svc.import_dir(&dir).await.unwrap();
    let names: Vec<(String, Vec<String>)> = rep
        .imported
        .iter()
        .map(|(p, n)| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                n.clone(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            (
                "a-oci.tar".to_string(),
                vec!["registry.local/oci/one:1".to_string()]
            ),
            (
                "b-multi.tar.zst".into(),
                vec!["docker.io/library/multi:latest".into()]
            ),
            (
                "c-docker.tar.gz".into(),
                vec![
                    "docker.io/library/app:v1".into(),
                    "example.com/team/app:v2".into()
                ]
            ),
        ]
    );
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert!(rep.failed[0].0.ends_with("d-corrupt.tar.gz"));
    assert!(rep.skipped.is_empty());

    let snap = |name: &str, file: &str| {
        let rec = svc.get(name).unwrap().unwrap();
        let top = rec.layers.last().unwrap();
        std::fs::read_to_string(
            svc.root()
                .join("snapshots")
                .join(top.diff_id.hex())
                .join("etc")
                .join(file),
        )
        .unwrap()
    };
    assert_eq!(snap("registry.local/oci/one:1", "who"), "oci");
    assert_eq!(
        snap("multi", "arch"),
        "arm64",
        "the node's platform from the index"
    );
    assert_eq!(snap("app:v1", "who"), "docker1");
    assert_eq!(snap("example.com/team/app:v2", "who"), "docker2");
    let v2 = svc.get("example.com/team/app:v2").unwrap().unwrap();
    assert_eq!(v2.layers.len(), 2);
    assert_eq!(
        v2.layers[0].digest.as_str(),
        d2.layers[0].diff_id,
        "symlinked layer resolved"
    );
    let info = svc.inspect("app:v1").unwrap();
    assert_eq!(info.config.architecture().to_string(), "amd64");

    // Second start: nothing changed, nothing re-imported (the corrupt file is reported again).
    let before = svc.list().unwrap();
    let rep2 = svc.import_dir(&dir).await.unwrap();
    assert!(rep2.imported.is_empty(), "{rep2:?}");
    assert_eq!(rep2.skipped.len(), 3);
    assert_eq!(rep2.failed.len(), 1);
    assert_eq!(svc.list().unwrap(), before, "records untouched");

    // A renamed copy of an imported file is recognised by content.
    std::fs::copy(dir.join("a-oci.tar"), dir.join("e-copy.tar")).unwrap();
    let rep3 = svc.import_dir(&dir).await.unwrap();
    assert!(
        rep3.imported.is_empty() && rep3.skipped.len() == 4,
        "{rep3:?}"
    );

    // Unchanged means same size and mtime: such a file is not read again at all (proof: its
    // bytes replaced behind the store's back, mtime restored, and it still counts as imported).
    let a = dir.join("a-oci.tar");
    let original = std::fs::read(&a).unwrap();
    let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::write(&a, vec![0u8; original.len()]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let rep4 = svc.import_airgap(&dir).await;
    assert!(
        rep4.imported.is_empty() && rep4.skipped.len() == 4 && rep4.failed.len() == 1,
        "{rep4:?}"
    );
    std::fs::write(&a, &original).unwrap();

    // An operator removed one of a tarball's images: the next start imports it again.
    assert!(svc.remove("registry.local/oci/one:1").await.unwrap());
    let rep5 = svc.import_airgap(&dir).await;
    assert_eq!(rep5.imported.len(), 1, "{rep5:?}");
    assert!(svc.get("registry.local/oci/one:1").unwrap().is_some());

    // Nothing to GC: every blob imported is referenced... except the unpicked amd64 platform's
    // blobs, which no record uses.
    let gc = svc.gc().await.unwrap();
    let mut want = vec![
        amd.manifest_digest.clone(),
        amd.config_digest.clone(),
        amd.layers[0].digest.clone(),
    ];
    want.sort();
    let got: Vec<String> = gc.blobs_removed.iter().map(|d| d.to_string()).collect();
    assert_eq!(got, want);
    assert!(gc.snapshots_removed.is_empty());
}

#[tokio::test]
async fn imports_docker_25_save_format() {
    if !have_root() {
        return;
    }
    // Docker 25+ `docker save`: an OCI layout (blobs/sha256, index.json) plus manifest.json whose
    // Config/Layers point into blobs/.
    let img = image(
        vec![
            marker_layer("base", "b", Compression::None),
            marker_layer("who", "docker25", Compression::None),
        ],
        "amd64",
        None,
        true,
    );
    let mut raw = oci_layout(
        &[&img],
        &[],
        &[(
            "docker.io/library/app:v3",
            &img.manifest_digest,
            img.manifest.len(),
            img.manifest_media_type,
        )],
    );
    // Append manifest.json to the OCI layout archive (drop its two end-of-archive blocks first).
    raw.truncate(raw.len() - 1024);
    let mut b = tar::Builder::new(raw);
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", &img.config_digest[7..]),
        "RepoTags": ["app:v3"],
        "Layers": img.layers.iter().map(|l| format!("blobs/sha256/{}", &l.digest[7..])).collect::<Vec<_>>(),
    }]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let raw = b.into_inner().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("airgap");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("app.tar"), &raw).unwrap();
    let mut cfg = r3s_images::ImageServiceConfig::new(tmp.path().join("store"));
    cfg.platform = r3s_images::Platform::parse("linux/amd64").unwrap();
    let svc = r3s_images::ImageService::open(cfg).unwrap();
    let rep = svc.import_dir(&dir).await.unwrap();
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert_eq!(rep.imported[0].1, ["docker.io/library/app:v3"]);
    let rec = svc.get("app:v3").unwrap().unwrap();
    let top = rec.layers.last().unwrap();
    let who = svc
        .root()
        .join("snapshots")
        .join(top.diff_id.hex())
        .join("etc/who");
    assert_eq!(std::fs::read_to_string(who).unwrap(), "docker25");
}
