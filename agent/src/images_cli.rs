//! `r3s-agent images pull|list|rm|import`: the operator's image commands (what `k3s ctr images` and
//! `crictl pull/images/rmi` are on a k3s node), working on the store the agent itself uses,
//! `<data-dir>/agent/image-store` ([`crate::layout::Layout::images`]).
//!
//! Settings: only `--data-dir`, `--private-registry`, `--config` and `--debug` matter here, and they
//! resolve exactly as for the agent (flag, then `R3S_*` variable, then the config file, then the
//! default), so the same `/etc/r3s/config.yaml` points both at the same store and registries.yaml.
//! `--server`/`--token` are not needed. The store is locked across processes (see
//! `r3s_images::service`), so these commands are safe while the agent runs.
//!
//! Output: results on stdout (one line per image), progress on stderr: bars per layer on a
//! terminal, plain lines otherwise. Every failure is one line `r3s-agent: <what>` and exit status 1.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use r3s_images::{
    ImageError, ImageRecord, ImageService, ImageServiceConfig, Keyring, Platform, Progress,
    PullEvent, PullOptions, RegistriesConfig,
};

use crate::cli::Cli;
use crate::layout::Layout;

/// Manage the images of this node's image store (pull, list, remove, import air-gap tarballs).
#[derive(Parser, Debug)]
#[command(name = "r3s-agent images", max_term_width = 100)]
pub struct ImagesCli {
    /// Load --data-dir and --private-registry from FILE, as the agent does [env: R3S_CONFIG_FILE]
    /// [default: /etc/r3s/config.yaml]
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Folder the agent holds state in (the store is <DIR>/agent/image-store) [env: R3S_DATA_DIR] [default: /var/lib/r3s]
    #[arg(long, short = 'd', value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Private registry configuration file [env: R3S_PRIVATE_REGISTRY]
    /// [default: /etc/r3s/registries.yaml]
    #[arg(long, value_name = "FILE", global = true)]
    pub private_registry: Option<PathBuf>,

    /// Turn on debug logs
    #[arg(long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Pull images (registries.yaml mirrors, rewrites and credentials apply)
    Pull {
        /// Platform to pull from multi-arch images (os/arch[/variant]) [default: this host's]
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<String>,
        /// Registry credentials for the image's registry
        #[arg(long, value_name = "USER:PASSWORD")]
        creds: Option<String>,
        /// Image references (nginx, ghcr.io/org/app:1.2, repo@sha256:...)
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// List images: REF, DIGEST, PLATFORM, SIZE
    #[command(visible_alias = "ls")]
    List {
        /// Print only the references
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Remove images and collect the content no other image uses
    #[command(visible_alias = "rmi")]
    Rm {
        /// Remove even if a container uses the image (its mounted layers stay until it is gone)
        #[arg(long, short = 'f')]
        force: bool,
        /// Image references or image IDs (sha256:...)
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Import image tarballs (OCI image layout or `docker save`; plain, .tar.gz or .tar.zst)
    Import {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// Runs `r3s-agent images ...` (`args` is the whole command line, program name first).
pub fn run(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    // `r3s-agent images` is the program name clap shows in usage lines.
    let rest = args.into_iter().skip(2);
    let argv = std::iter::once(std::ffi::OsString::from("r3s-agent images")).chain(rest);
    let cli = match ImagesCli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help: clap's text on stdout, success.
            let _ = e.print();
            return Ok(());
        }
        Err(e) => return Err(anyhow::anyhow!("{}", clap_line(&e))),
    };
    let (data_dir, registries_path) = settings(&cli)?;
    let rust_log = std::env::var("RUST_LOG").ok();
    // Library warnings would break the one-line error contract; --debug or RUST_LOG show them.
    let level = if cli.debug || rust_log.is_some() {
        rust_log.as_deref()
    } else {
        Some("error")
    };
    r3s_config::logging::init(cli.debug, level)?;
    let mut cfg = ImageServiceConfig::new(Layout::new(&data_dir, &data_dir).images());
    cfg.registries = RegistriesConfig::load(&registries_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let svc = ImageService::open(cfg)
            .with_context(|| format!("cannot open the image store under {}", data_dir.display()))?;
        match cli.command {
            ImagesCommand::Pull {
                platform,
                creds,
                images,
            } => pull(&svc, platform, creds, &images).await,
            ImagesCommand::List { quiet } => list(&svc, quiet),
            ImagesCommand::Rm { force, images } => rm(&svc, force, &images).await,
            ImagesCommand::Import { files } => import(&svc, &files).await,
        }
    })
}

/// `--data-dir` and `--private-registry` as the agent resolves them (flag > env > file > default).
fn settings(cli: &ImagesCli) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut args: Vec<std::ffi::OsString> = vec!["r3s-agent".into()];
    let mut flag = |name: &str, v: &Option<PathBuf>| {
        if let Some(v) = v {
            args.push(format!("--{name}").into());
            args.push(v.into());
        }
    };
    flag("config", &cli.config);
    flag("data-dir", &cli.data_dir);
    flag("private-registry", &cli.private_registry);
    let resolved = r3s_config::resolve::<Cli, _, _>(args, std::env::vars_os())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((resolved.cli.data_dir, resolved.cli.private_registry))
}

fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    // The message and its details (e.g. the missing arguments), without the usage block.
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let msg = parts.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    format!("images: {msg} (see `r3s-agent images --help`)")
}

/// Explains the errors an operator can act on.
fn explain(image: &str, err: ImageError) -> anyhow::Error {
    match err {
        ImageError::NotFound(_) => anyhow::anyhow!(
            "image {image} is not in the store (`r3s-agent images list` shows what is)"
        ),
        other => anyhow::Error::new(other),
    }
}

async fn pull(
    svc: &ImageService,
    platform: Option<String>,
    creds: Option<String>,
    images: &[String],
) -> anyhow::Result<()> {
    let platform = platform
        .map(|p| Platform::parse(&p))
        .transpose()
        .context("--platform")?;
    for image in images {
        let mut keyring = Keyring::default();
        if let Some(c) = &creds {
            let (user, pass) = c.split_once(':').context("--creds must be USER:PASSWORD")?;
            let registry = r3s_images::ImageRef::parse(image)?.registry().to_string();
            let json =
                serde_json::json!({"auths": {registry: {"username": user, "password": pass}}});
            keyring.add_docker_config(json.to_string().as_bytes())?;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let display = tokio::spawn(show_progress(rx, std::io::stderr().is_terminal()));
        let opts = PullOptions {
            keyring,
            platform: platform.clone(),
            progress: Progress::new(tx),
        };
        let result = svc.pull(image, &opts).await;
        drop(opts); // closes the channel: the display finishes
        let _ = display.await;
        let rec = result?;
        println!("{} {}", rec.name, rec.target);
    }
    Ok(())
}

/// Draws pull events: one bar per layer on a terminal, else one line per step.
async fn show_progress(mut rx: tokio::sync::mpsc::UnboundedReceiver<PullEvent>, tty: bool) {
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: Vec<(r3s_images::Digest, ProgressBar)> = Vec::new();
    let mut fallbacks: Vec<String> = Vec::new();
    let bar = |bars: &[(r3s_images::Digest, ProgressBar)], d: &r3s_images::Digest| {
        bars.iter().find(|(k, _)| k == d).map(|(_, b)| b.clone())
    };
    while let Some(ev) = rx.recv().await {
        match ev {
            // Told only once the pull succeeded: a failed pull's one error line names them all.
            PullEvent::EndpointFailed { error, .. } => {
                fallbacks.push(format!("{error}; the next endpoint was used"));
            }
            PullEvent::Resolved {
                image,
                endpoint,
                manifest,
                layers,
            } => {
                let total: u64 = layers.iter().map(|(_, s)| s).sum();
                let line = format!(
                    "{image}: manifest {manifest} from {endpoint}, {} layers, {}",
                    layers.len(),
                    HumanBytes(total)
                );
                if tty {
                    let _ = multi.println(line);
                    for (d, size) in layers {
                        let pb = multi.add(ProgressBar::new(size));
                        pb.set_style(style.clone());
                        pb.set_prefix(short(&d));
                        bars.push((d, pb));
                    }
                } else {
                    eprintln!("{line}");
                }
            }
            PullEvent::LayerProgress { digest, done, .. } => {
                if let Some(pb) = bar(&bars, &digest) {
                    pb.set_position(done);
                }
            }
            PullEvent::LayerDownloaded {
                digest,
                size,
                cached,
            } => {
                let what = if cached {
                    "already present"
                } else {
                    "downloaded"
                };
                match bar(&bars, &digest) {
                    Some(pb) => {
                        pb.set_position(size);
                        pb.set_message(what);
                    }
                    None => eprintln!("layer {} {what} ({})", short(&digest), HumanBytes(size)),
                }
            }
            PullEvent::LayerUnpacked { digest, cached, .. } => {
                let what = if cached {
                    "unpacked (cached)"
                } else {
                    "unpacked"
                };
                match bar(&bars, &digest) {
                    Some(pb) => pb.finish_with_message(what),
                    None => eprintln!("layer {} {what}", short(&digest)),
                }
            }
            PullEvent::Done {
                image,
                downloaded,
                total,
                duration,
            } => {
                for (_, pb) in &bars {
                    pb.finish();
                }
                for line in fallbacks.drain(..) {
                    if tty {
                        let _ = multi.println(line);
                    } else {
                        eprintln!("{line}");
                    }
                }
                let line = format!(
                    "{image}: pulled in {:.1}s, {} downloaded of {}",
                    duration.as_secs_f64(),
                    HumanBytes(downloaded),
                    HumanBytes(total)
                );
                if tty {
                    let _ = multi.println(line);
                } else {
                    eprintln!("{line}");
                }
            }
        }
    }
    // Bars of a failed pull stay where they stopped.
    for (_, pb) in &bars {
        if !pb.is_finished() {
            pb.abandon();
        }
    }
}

/// `sha256:0123456789ab`: enough to tell layers apart.
fn short(d: &r3s_images::Digest) -> String {
    let s = d.to_string();
    s.chars().take(19).collect()
}

fn list(svc: &ImageService, quiet: bool) -> anyhow::Result<()> {
    let records = svc.list()?;
    if quiet {
        for r in &records {
            println!("{}", r.name);
        }
        return Ok(());
    }
    print!("{}", table(&records));
    Ok(())
}

/// The `list` table: REF, DIGEST, PLATFORM, SIZE (compressed, what a pull downloads).
pub fn table(records: &[ImageRecord]) -> String {
    let rows: Vec<[String; 4]> = records
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.target.to_string(),
                r.platform.to_string(),
                HumanBytes(r.size).to_string(),
            ]
        })
        .collect();
    let header = ["REF", "DIGEST", "PLATFORM", "SIZE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}   {:<w1$}   {:<w2$}   {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

async fn rm(svc: &ImageService, force: bool, images: &[String]) -> anyhow::Result<()> {
    let mut failure = None;
    for image in images {
        match svc.remove_image(image, force).await {
            Ok(names) => {
                for n in names {
                    println!("Deleted: {n}");
                }
            }
            Err(e) => {
                failure = Some(explain(image, e));
                break;
            }
        }
    }
    // Collect what the removed images alone used, also when a later name failed.
    let rep = svc.gc().await?;
    if !rep.blobs_removed.is_empty() || !rep.snapshots_removed.is_empty() {
        eprintln!(
            "freed {} ({} blobs, {} snapshots)",
            HumanBytes(rep.bytes_freed),
            rep.blobs_removed.len(),
            rep.snapshots_removed.len()
        );
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn import(svc: &ImageService, files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files {
        let records = svc
            .import_file(file)
            .await
            .with_context(|| format!("import {}", file.display()))?;
        if records.is_empty() {
            anyhow::bail!("import {}: the archive names no image", file.display());
        }
        for r in records {
            println!("{} {}", r.name, r.target);
        }
    }
    Ok(())
}
