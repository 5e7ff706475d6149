//! `r3s-agent`: parse the configuration, set up logging, run the agent on a small Tokio runtime.
//!
//! Every failure ends the same way: one line `r3s-agent: <what is wrong>` on stderr, exit status 1.
//!
//! `r3s-agent check-config` (k3s's preflight command) runs the host checks instead: one line per
//! problem on stdout, exit status 1 if there is any. It is recognised before flag parsing, since
//! the configuration resolver knows only the run command's flags.
//!
//! `r3s-agent shim …` is the per-container shim the agent spawns itself (see
//! [`r3s_agent::runtime::shim`]), not a command for people.
//!
//! `r3s-agent images pull|list|rm|import` (k3s's `ctr images`/`crictl`) is recognised the same way
//! and needs none of the run command's required settings (see [`r3s_agent::images_cli`]).

use std::process::ExitCode;

use anyhow::Context;
use r3s_agent::cli::Cli;
use r3s_agent::config::AgentConfig;
use r3s_config::exit::{config_failure, fail};

const BIN: &str = "r3s-agent";

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    if std::env::args_os().nth(1).is_some_and(|a| a == "shim") {
        // A container's shim (see r3s_agent::runtime::shim): no config, no logging, no tokio.
        let args: Vec<_> = std::env::args_os().skip(2).collect();
        return r3s_agent::runtime::shim::main(&args);
    }
    // The helper that starts an exec'd process in a container (see r3s_agent::runtime::tenant).
    #[cfg(target_os = "linux")]
    if std::env::args_os().nth(1).is_some_and(|a| a == "shim-exec") {
        let args: Vec<_> = std::env::args_os().skip(2).collect();
        return r3s_agent::runtime::tenant::main(&args);
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "check-config")
    {
        return check_config();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "images") {
        return match r3s_agent::images_cli::run(std::env::args_os().collect()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(BIN, &r3s_config::exit::chain(err.as_ref())),
        };
    }
    let resolved = match r3s_config::resolve::<Cli, _, _>(std::env::args_os(), std::env::vars_os())
    {
        Ok(resolved) => resolved,
        Err(err) => return config_failure(BIN, err),
    };
    match start(resolved) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(BIN, &r3s_config::exit::chain(err.as_ref())),
    }
}

fn start(resolved: r3s_config::Resolved<Cli>) -> anyhow::Result<()> {
    let cfg = AgentConfig::from_cli(resolved.cli, resolved.sources, resolved.config_files)?;
    r3s_config::logging::init(cfg.debug, std::env::var("RUST_LOG").ok().as_deref())?;
    tune_malloc();
    // Two workers suffice for a node agent on a Raspberry Pi; the cores belong to the pods.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    runtime.spawn(trim_heap());
    runtime.block_on(r3s_agent::run::run(cfg))?;
    Ok(())
}

/// glibc malloc settings for a small, mostly idle daemon, applied before any thread starts.
///
/// By default glibc gives every thread that allocates an arena of its own, up to 8 per core; the
/// agent's threads (2 Tokio workers, the blocking pool that comes and goes, the DNS server's
/// thread) each keep a partly used heap, and memory freed in one is not reused by another. Two
/// arenas are plenty for an agent whose work is mostly waiting: measured on x86_64 this takes
/// megabytes off the idle RSS (docs/benchmarks.md, item 1) at no visible cost to pod start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// Gives freed heap memory back to the kernel now and then (glibc keeps it otherwise: start-up,
/// image pulls and pod starts leave free chunks that idle RSS would carry forever). `malloc_trim`
/// walks the arenas and returns whole free pages; every 30 s costs well under a millisecond.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn trim_heap() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim has no preconditions; it only releases free memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

fn check_config() -> ExitCode {
    #[cfg(target_os = "linux")]
    let findings = r3s_agent::node::preflight::check();
    #[cfg(not(target_os = "linux"))]
    let findings = vec!["r3s-agent runs pods on Linux only".to_string()];
    if findings.is_empty() {
        println!(
            "r3s-agent: this host can run pods (memory cgroup, cgroups, overlayfs, vxlan: ok)"
        );
        return ExitCode::SUCCESS;
    }
    for line in &findings {
        println!("{line}");
    }
    ExitCode::FAILURE
}
