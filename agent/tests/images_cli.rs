//! `r3s-agent images pull|list|rm|import`, the real binary against a real `docker-registry` on
//! 127.0.0.1 (the images crate's test harness): settings from flags, `R3S_*` variables and the
//! config file (with no --server/--token), the store at `<data-dir>/agent/image-store`, the list
//! table, rm refusing an image a container uses, GC after rm, import of both tarball formats, and
//! one-line errors with exit status 1.
#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use oci_client::secrets::RegistryAuth;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_r3s-agent");

/// The binary with a cleared environment (an empty config file instead of /etc/r3s/config.yaml).
fn agent(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let empty = dir.join("r3st-empty-config.yaml");
    std::fs::write(&empty, "").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("R3S_CONFIG_FILE", &empty)
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run r3s-agent")
}

fn ok(cmd: Command) -> (String, String) {
    let out = run(cmd);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Exit status 1 and exactly one line `r3s-agent: ...` on stderr, returned.
fn fails(cmd: Command) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {lines:#?}");
    assert!(lines[0].starts_with("r3s-agent: "), "{}", lines[0]);
    lines[0].to_string()
}

fn blobs(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("agent/image-store/blobs/sha256"))
        .map(|rd| {
            rd.map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

/// An OCI image-layout tarball naming `img` `name`.
fn oci_layout_tar(img: &Image, name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut blob = |d: &str, data: &[u8]| add(&mut b, &format!("blobs/sha256/{}", &d[7..]), data);
    for l in &img.layers {
        blob(&l.digest, &l.data);
    }
    blob(&img.config_digest, &img.config);
    blob(&img.manifest_digest, &img.manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": img.manifest_media_type, "digest": img.manifest_digest,
        "size": img.manifest.len(), "annotations": {"io.containerd.image.name": name}}]});
    add(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
    b.into_inner().unwrap()
}

/// A legacy `docker save` tarball (uncompressed layers) tagged `tag`.
fn docker_save_tar(img: &Image, tag: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let cfg = format!("{}.json", &img.config_digest[7..]);
    add(&mut b, &cfg, &img.config);
    let mut layers = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&l.data[..]), &mut tar)
            .unwrap();
        add(&mut b, &format!("l{i}/layer.tar"), &tar);
        layers.push(format!("l{i}/layer.tar"));
    }
    let manifest = serde_json::json!([{"Config": cfg, "RepoTags": [tag], "Layers": layers}]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap()
}

#[tokio::test]
async fn images_pull_list_rm_import() {
    if !have_registry() || !have_root() {
        return;
    }
    let reg = Registry::start();
    let shared = marker_layer("shared", "s", Compression::Gzip);
    let app = image(
        vec![
            layer_copy(&shared),
            marker_layer("app", "app", Compression::Zstd),
        ],
        "amd64",
        None,
        false,
    );
    let other = image(
        vec![shared, marker_layer("other", "o", Compression::Gzip)],
        "amd64",
        None,
        true,
    );
    reg.push("app", "1", &app, &RegistryAuth::Anonymous).await;
    reg.push("other", "1", &other, &RegistryAuth::Anonymous)
        .await;

    let tmp = tempfile::Builder::new()
        .prefix("r3st-images-cli")
        .tempdir()
        .unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let yaml = write(
        &t.join("registries.yaml"),
        &format!(
            "mirrors:\n  \"{0}\":\n    endpoint:\n      - \"http://{0}\"\n",
            reg.addr
        ),
    );
    let (d, y) = (data.to_str().unwrap(), yaml.to_str().unwrap());
    let app_ref = format!("{}/app:1", reg.addr);
    let other_ref = format!("{}/other:1", reg.addr);

    // pull: flags only, no --server/--token; progress as plain lines (stderr is not a terminal).
    let (out, err) = ok(agent(
        t,
        &[
            "images",
            "pull",
            "--data-dir",
            d,
            "--private-registry",
            y,
            "--platform",
            "linux/amd64",
            &app_ref,
        ],
        &[],
    ));
    assert_eq!(out, format!("{app_ref} {}\n", app.manifest_digest));
    assert!(err.contains("2 layers"), "{err}");
    assert!(err.contains("pulled in"), "{err}");
    assert!(err.contains("downloaded"), "{err}");
    assert!(!data.join("agent/images").exists(), "air-gap dir untouched");

    // pull: settings from R3S_* variables, flags after the subcommand work too.
    ok(agent(
        t,
        &["images", "pull", &other_ref],
        &[("R3S_DATA_DIR", d), ("R3S_PRIVATE_REGISTRY", y)],
    ));

    // list: from the config file, which also holds run-only keys (server, token).
    let cfg = write(
        &t.join("config.yaml"),
        &format!(
            "server: https://127.0.0.1:6443\ntoken: r3st-secret\ndata-dir: {d}\nprivate-registry: {y}\n"
        ),
    );
    let (out, _) = ok(agent(
        t,
        &["images", "list", "--config", cfg.to_str().unwrap()],
        &[],
    ));
    let lines: Vec<&str> = out.lines().collect();
    let cols: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(cols, ["REF", "DIGEST", "PLATFORM", "SIZE"], "{out}");
    assert_eq!(lines.len(), 3, "{out}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..3], [&app_ref, &app.manifest_digest, "linux/amd64"]);
    assert!(row[3..].join(" ").ends_with('B'), "size column: {out}");
    assert!(lines[2].starts_with(&other_ref), "{out}");
    let (q, _) = ok(agent(t, &["images", "ls", "-q", "--data-dir", d], &[]));
    assert_eq!(q, format!("{app_ref}\n{other_ref}\n"));

    // rm refuses an image a container uses; --force removes it anyway.
    let svc = r3s_images::ImageService::open(r3s_images::ImageServiceConfig::new(
        data.join("agent/image-store"),
    ))
    .unwrap();
    let cdir = t.join("container");
    svc.prepare_rootfs_copy(&app_ref, &cdir).await.unwrap();
    let line = fails(agent(t, &["images", "rm", "--data-dir", d, &app_ref], &[]));
    assert!(
        line.contains("in use") && line.contains("container"),
        "{line}"
    );
    svc.release_rootfs(&cdir).await.unwrap();

    // rm: the record goes and GC removes exactly what only that image used.
    let before = blobs(&data);
    let (out, _) = ok(agent(t, &["images", "rm", "--data-dir", d, &app_ref], &[]));
    assert_eq!(out, format!("Deleted: {app_ref}\n"));
    let after = blobs(&data);
    let mut gone: Vec<String> = before.into_iter().filter(|b| !after.contains(b)).collect();
    gone.sort();
    let mut want = vec![
        app.manifest_digest.clone(),
        app.config_digest.clone(),
        app.layers[1].digest.clone(),
    ];
    want.sort();
    assert_eq!(gone, want, "shared layer kept for other:1");
    let (q, _) = ok(agent(t, &["images", "ls", "-q", "--data-dir", d], &[]));
    assert_eq!(q, format!("{other_ref}\n"));

    // Errors: one actionable line, exit status 1.
    let line = fails(agent(
        t,
        &["images", "rm", "--data-dir", d, "nothere:1"],
        &[],
    ));
    assert!(line.contains("docker.io/library/nothere:1") || line.contains("nothere:1"));
    assert!(line.contains("not in the store"), "{line}");
    let line = fails(agent(
        t,
        &[
            "images",
            "pull",
            "--data-dir",
            d,
            "--private-registry",
            y,
            &format!("{}/missing:1", reg.addr),
        ],
        &[],
    ));
    assert!(line.to_lowercase().contains("unknown"), "{line}");
    let line = fails(agent(t, &["images", "frobnicate"], &[]));
    assert!(line.contains("frobnicate"), "{line}");
    let line = fails(agent(t, &["images", "pull", "--data-dir", d], &[]));
    assert!(line.contains("IMAGE"), "{line}");

    // import: both tarball formats, compressed too; a corrupt one fails with its name.
    let imp = image(
        vec![marker_layer("imp", "i", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    let oci = write_bytes(
        &t.join("oci.tar"),
        &oci_layout_tar(&imp, "registry.local/imp:oci"),
    );
    let mut zst = zstd::encode_all(&docker_save_tar(&imp, "imp:docker")[..], 3).unwrap();
    let docker = write_bytes(&t.join("docker.tar.zst"), &zst);
    let (out, _) = ok(agent(
        t,
        &[
            "images",
            "import",
            "--data-dir",
            d,
            oci.to_str().unwrap(),
            docker.to_str().unwrap(),
        ],
        &[],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0],
        format!("registry.local/imp:oci {}", imp.manifest_digest)
    );
    assert!(
        lines[1].starts_with("docker.io/library/imp:docker sha256:"),
        "{out}"
    );
    zst.truncate(zst.len() / 2);
    let bad = write_bytes(&t.join("bad.tar.zst"), &zst);
    let line = fails(agent(
        t,
        &["images", "import", "--data-dir", d, bad.to_str().unwrap()],
        &[],
    ));
    assert!(line.contains("bad.tar.zst"), "{line}");
    let (q, _) = ok(agent(t, &["images", "ls", "-q", "--data-dir", d], &[]));
    assert_eq!(
        q,
        format!("{other_ref}\ndocker.io/library/imp:docker\nregistry.local/imp:oci\n")
    );
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

fn write_bytes(path: &Path, data: &[u8]) -> PathBuf {
    std::fs::write(path, data).unwrap();
    path.to_owned()
}

fn layer_copy(l: &Layer) -> Layer {
    Layer {
        data: l.data.clone(),
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        media_type: l.media_type,
    }
}
