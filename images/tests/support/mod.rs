//! Test support: a real `docker-registry` (Debian's distribution 2.8) on 127.0.0.1 with its own
//! config and storage, killed by PID on drop; an offline OCI image writer (layers from
//! busybox-static or literal entries, gzip/zstd/uncompressed); pushing with oci-client.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

/// Returns false (after printing `skipped: ...`) if a prerequisite is missing; panics under CI=true.
pub fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("missing prerequisite: {what}");
    }
    eprintln!("skipped: {what} is not available");
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn have_registry() -> bool {
    require(
        "docker-registry (apt-get install docker-registry)",
        Path::new("/usr/bin/docker-registry").exists(),
    )
}

pub fn have_root() -> bool {
    require("root (mknod/chown/xattrs/overlay mounts)", is_root())
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A running registry.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub tls: bool,
    child: Child,
}

#[derive(Default)]
pub struct RegistryOpts {
    /// (user, password) for htpasswd (bcrypt via `htpasswd -B`).
    pub basic: Option<(String, String)>,
    /// (cert pem, key pem) for HTTPS.
    pub tls: Option<(String, String)>,
    /// Raw YAML appended to the config (e.g. an `auth: token:` section).
    pub extra: Option<String>,
    /// CA pem whose certificates clients must present (`http.tls.clientcas`; needs `tls`).
    pub client_ca: Option<String>,
    /// Serve this storage directory (e.g. another registry's `dir/data`) instead of a new one.
    pub storage: Option<PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(RegistryOpts::default())
    }

    pub fn start_with(opts: RegistryOpts) -> Self {
        // The free port can be taken by someone else before the registry binds it: retry.
        for _ in 0..5 {
            if let Some(reg) = Self::try_start(&opts) {
                return reg;
            }
        }
        panic!("docker-registry did not start after 5 attempts");
    }

    fn try_start(opts: &RegistryOpts) -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("r3st-registry")
            .tempdir()
            .unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            opts.storage
                .clone()
                .unwrap_or_else(|| dir.path().join("data"))
                .display()
        );
        if let Some((cert, key)) = &opts.tls {
            let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                c.display(),
                k.display()
            );
            if let Some(client_ca) = &opts.client_ca {
                let p = dir.path().join("client-ca.pem");
                std::fs::write(&p, client_ca).unwrap();
                cfg += &format!("    clientcas:\n      - {}\n", p.display());
            }
        }
        if let Some((user, pass)) = &opts.basic {
            let ht = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(&ht, &out.stdout).unwrap();
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: r3s-test\n    path: {}\n",
                ht.display()
            );
        }
        if let Some(extra) = &opts.extra {
            cfg += extra;
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut reg = Registry {
            dir,
            addr,
            tls: opts.tls.is_some(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&reg.addr).is_err() {
            if let Ok(Some(status)) = reg.child.try_wait() {
                eprintln!("docker-registry exited ({status}), retrying: {}", reg.log());
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(reg)
    }

    pub fn start_with_extra(extra: &str) -> Self {
        Self::start_with(RegistryOpts {
            extra: Some(extra.to_string()),
            ..Default::default()
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The file the registry stores a blob in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

    fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: if self.tls {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            accept_invalid_certificates: true,
            ..Default::default()
        })
    }

    /// Pushes blobs and manifests of `img` as `repo:tag`.
    pub async fn push(&self, repo: &str, tag: &str, img: &Image, auth: &RegistryAuth) {
        let client = self.client();
        let r = Reference::with_tag(self.addr.clone(), repo.into(), tag.into());
        client
            .auth(&r, auth, RegistryOperation::Push)
            .await
            .unwrap();
        push_image_blobs(&client, &r, img).await;
        let mt = http::HeaderValue::from_str(img.manifest_media_type).unwrap();
        client
            .push_manifest_raw(&r, img.manifest.clone(), mt)
            .await
            .unwrap();
    }

    /// Pushes the images and an index over them as `repo:tag`.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        imgs: &[&Image],
        index: &[u8],
        auth: &RegistryAuth,
    ) {
        let client = self.client();
        let r = Reference::with_tag(self.addr.clone(), repo.into(), tag.into());
        client
            .auth(&r, auth, RegistryOperation::Push)
            .await
            .unwrap();
        for img in imgs {
            push_image_blobs(&client, &r, img).await;
            let by_digest =
                Reference::with_digest(self.addr.clone(), repo.into(), img.manifest_digest.clone());
            let mt = http::HeaderValue::from_str(img.manifest_media_type).unwrap();
            client
                .push_manifest_raw(&by_digest, img.manifest.clone(), mt)
                .await
                .unwrap();
        }
        let doc: serde_json::Value = serde_json::from_slice(index).unwrap();
        let mt = http::HeaderValue::from_str(doc["mediaType"].as_str().unwrap()).unwrap();
        if let Err(e) = client.push_manifest_raw(&r, index.to_vec(), mt).await {
            panic!("push index: {e}\nregistry log:\n{}", self.log());
        }
    }
}

async fn push_image_blobs(client: &Client, r: &Reference, img: &Image) {
    for l in &img.layers {
        client
            .push_blob(r, l.data.clone(), &l.digest)
            .await
            .unwrap();
    }
    client
        .push_blob(r, img.config.clone(), &img.config_digest)
        .await
        .unwrap();
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, Vec<u8>, u32),
    /// File with uid/gid.
    Owned(&'a str, Vec<u8>, u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str, u32, u32),
    Fifo(&'a str),
    /// Deletes a path of a lower layer.
    Whiteout(&'a str),
    /// Marks a directory opaque.
    Opaque(&'a str),
    /// Raw path (no checks): for traversal tests.
    RawFile(&'a str, Vec<u8>),
    /// A file with one xattr (PAX `SCHILY.xattr.<name>` record).
    XattrFile(&'a str, Vec<u8>, &'a str, &'a [u8]),
}

/// One PAX record: `<len> <key>=<value>\n`, where len counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

pub struct Layer {
    pub data: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
    pub media_type: &'static str,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

pub fn layer(entries: &[Entry<'_>], c: Compression) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::Dir(p, mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::File(p, data, mode) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::Owned(p, data, mode, uid, gid) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                h.set_uid(*uid);
                h.set_gid(*gid);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::CharDev(p, major, minor) => {
                let mut h = header(tar::EntryType::Char, 0o666, 0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::Fifo(p) => {
                let mut h = header(tar::EntryType::Fifo, 0o600, 0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::Whiteout(p) => {
                let path = Path::new(p);
                let name = format!(".wh.{}", path.file_name().unwrap().to_str().unwrap());
                let wh = path
                    .parent()
                    .map(|d| d.join(&name))
                    .unwrap_or_else(|| PathBuf::from(&name));
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, wh, &[][..]).unwrap();
            }
            Entry::Opaque(dir) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, Path::new(dir).join(".wh..wh..opq"), &[][..])
                    .unwrap();
            }
            Entry::XattrFile(p, data, name, value) => {
                let rec = pax_record(&format!("SCHILY.xattr.{name}"), value);
                let mut x = header(tar::EntryType::XHeader, 0o644, rec.len() as u64);
                b.append_data(&mut x, "PaxHeaders/x", &rec[..]).unwrap();
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::RawFile(p, data) => {
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                // Bypass the builder's path checks by writing the name bytes directly.
                let name = &mut h.as_old_mut().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, &data[..]).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let (data, media_type) = match c {
        Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            zstd::encode_all(&tar[..], 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    };
    Layer {
        digest: sha256(&data),
        data,
        diff_id,
        media_type,
    }
}

/// busybox-static with a few applet symlinks.
pub fn busybox_layer(c: Compression) -> Layer {
    let bb = std::fs::read("/bin/busybox").expect("busybox-static installed");
    layer(
        &[
            Entry::Dir("bin", 0o755),
            Entry::File("bin/busybox", bb, 0o755),
            Entry::Symlink("bin/sh", "busybox"),
            Entry::Symlink("bin/cat", "busybox"),
            Entry::Symlink("bin/ls", "busybox"),
            Entry::Symlink("bin/echo", "busybox"),
        ],
        c,
    )
}

/// The host's architecture as OCI platforms name it (`amd64`, `arm64`, `arm`, …).
pub fn host_arch() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// A one-layer image for the host's architecture: busybox-static with `applets` linked in /bin, a
/// world-writable /tmp and the given extra directories (mode 0755).
pub fn busybox_image(applets: &[&str], dirs: &[&str]) -> Image {
    let bb = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox", bb, 0o755),
        Entry::Dir("tmp", 0o1777),
    ];
    entries.extend(dirs.iter().map(|d| Entry::Dir(d, 0o755)));
    entries.extend(links.iter().map(|l| Entry::Symlink(l, "busybox")));
    image(
        vec![layer(&entries, Compression::Gzip)],
        &host_arch(),
        None,
        false,
    )
}

pub fn have_busybox() -> bool {
    require(
        "busybox-static (/bin/busybox)",
        Path::new("/bin/busybox").exists(),
    )
}

pub struct Image {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: &'static str,
}

/// An OCI image (or Docker schema 2 with `docker`) for `arch`.
pub fn image(layers: Vec<Layer>, arch: &str, variant: Option<&str>, docker: bool) -> Image {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let mut config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh", "-c", "echo hello from image"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(v) = variant {
        config["variant"] = v.into();
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256(&config);
    let (mt, cfg_mt) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let lmt = if docker && l.media_type.ends_with("gzip") {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                l.media_type
            };
            serde_json::json!({"mediaType": lmt, "digest": l.digest, "size": l.data.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": cfg_mt, "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    Image {
        manifest_digest: sha256(&manifest),
        manifest,
        config_digest,
        config,
        layers,
        manifest_media_type: mt,
    }
}

/// An OCI index over `(image, arch, variant)`.
pub fn index(entries: &[(&Image, &str, Option<&str>)]) -> Vec<u8> {
    index_typed(entries, "application/vnd.oci.image.index.v1+json")
}

/// A Docker manifest list over `(image, arch, variant)`.
pub fn docker_list(entries: &[(&Image, &str, Option<&str>)]) -> Vec<u8> {
    index_typed(
        entries,
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
}

fn index_typed(entries: &[(&Image, &str, Option<&str>)], media_type: &str) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(img, arch, variant)| {
            let mut p = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                p["variant"] = (*v).into();
            }
            serde_json::json!({"mediaType": img.manifest_media_type, "digest": img.manifest_digest,
                "size": img.manifest.len(), "platform": p})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    }))
    .unwrap()
}

/// A one-file layer (small; cheap to build).
pub fn marker_layer(name: &str, content: &str, c: Compression) -> Layer {
    layer(
        &[
            Entry::Dir("etc", 0o755),
            Entry::File(&format!("etc/{name}"), content.as_bytes().to_vec(), 0o644),
        ],
        c,
    )
}

/// An ImageService over a fresh temp dir, with `registries.yaml` text making `reg` plain HTTP.
pub fn service(dir: &Path, reg: &Registry, platform: &str) -> r3s_images::ImageService {
    let scheme = if reg.tls { "https" } else { "http" };
    let yaml = format!(
        "mirrors:\n  \"{0}\":\n    endpoint:\n      - \"{scheme}://{0}\"\n",
        reg.addr
    );
    service_with_yaml(dir, &yaml, platform)
}

pub fn service_with_yaml(dir: &Path, yaml: &str, platform: &str) -> r3s_images::ImageService {
    let mut cfg = r3s_images::ImageServiceConfig::new(dir.join("store"));
    cfg.registries = r3s_images::RegistriesConfig::from_yaml(yaml).unwrap();
    // Tests never fall back to the (HTTPS) default endpoint unless they ask for it.
    cfg.registries.disable_default_endpoint = true;
    cfg.platform = r3s_images::Platform::parse(platform).unwrap();
    r3s_images::ImageService::open(cfg).unwrap()
}

/// Unmounts a container rootfs on drop (tests clean up on failure too).
pub struct RootfsGuard {
    pub svc: r3s_images::ImageService,
    pub dir: PathBuf,
}

impl Drop for RootfsGuard {
    fn drop(&mut self) {
        let rootfs = self.dir.join("rootfs");
        if let Ok(c) = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string; a failing umount (not mounted) is harmless.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A TCP proxy in front of a registry that cuts the response of the first `max_cuts` requests for
/// one blob after `cut_after` bytes (a flaky link), and counts Range requests for it.
pub struct CutProxy {
    pub addr: String,
    pub cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub ranges: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CutProxy {
    pub fn start(upstream: &str, digest: &str, cut_after: usize, max_cuts: usize) -> Self {
        use std::io::Read;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cuts = Arc::new(AtomicUsize::new(0));
        let ranges = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (cuts2, ranges2, stop2) = (cuts.clone(), ranges.clone(), stop.clone());
        let upstream = upstream.to_string();
        let blob_path = format!("/blobs/{digest}");
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut client) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).into_owned();
                let Some(head) = text.split("\r\n\r\n").next() else {
                    continue;
                };
                let mut lines: Vec<&str> = head
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                lines.push("Connection: close");
                let is_blob = lines.first().is_some_and(|l| l.contains(&blob_path));
                if is_blob
                    && lines
                        .iter()
                        .any(|l| l.to_ascii_lowercase().starts_with("range:"))
                {
                    ranges2.fetch_add(1, Ordering::SeqCst);
                }
                let cut = is_blob && cuts2.fetch_add(1, Ordering::SeqCst) < max_cuts;
                if is_blob && !cut {
                    cuts2.fetch_sub(1, Ordering::SeqCst);
                }
                let Ok(mut up) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = up.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes());
                let mut sent = 0usize;
                loop {
                    let n = match up.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let n = if cut { n.min(cut_after - sent) } else { n };
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    if cut && sent >= cut_after {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
            }
        });
        CutProxy {
            addr,
            cuts,
            ranges,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A layer with one file of `len` pseudo-random (incompressible) bytes (`seed | 1` seeds it).
pub fn random_layer(len: usize, seed: u64) -> Layer {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    layer(&[Entry::File("blob.bin", data, 0o644)], Compression::None)
}
