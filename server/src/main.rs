//! `r3s-server`: parse the configuration, set up logging, run the server on a small Tokio runtime.
//!
//! Every failure ends the same way: one line `r3s-server: <what is wrong>` on stderr, exit status 1.
//!
//! `r3s-server token create|list|delete` (bootstrap tokens, [`r3s_server::join::command`]) is
//! recognised before flag parsing, since the configuration resolver knows only the server's flags;
//! so is `r3s-server certificate rotate` ([`r3s_server::cli::CertificateCli`]).

use std::process::ExitCode;

use anyhow::Context;
use r3s_config::exit::{config_failure, fail};
use r3s_server::cli::Cli;
use r3s_server::config::ServerConfig;

const BIN: &str = "r3s-server";

fn main() -> ExitCode {
    // The in-process agent's per-container shim (see r3s_agent::runtime::shim).
    #[cfg(target_os = "linux")]
    if std::env::args_os().nth(1).is_some_and(|a| a == "shim") {
        let args: Vec<_> = std::env::args_os().skip(2).collect();
        return r3s_agent::runtime::shim::main(&args);
    }
    // The helper that starts an exec'd process in a container (see r3s_agent::runtime::tenant).
    #[cfg(target_os = "linux")]
    if std::env::args_os().nth(1).is_some_and(|a| a == "shim-exec") {
        let args: Vec<_> = std::env::args_os().skip(2).collect();
        return r3s_agent::runtime::tenant::main(&args);
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        return token();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "certificate")
    {
        return certificate();
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
    let cfg = ServerConfig::from_cli(resolved.cli, resolved.sources, resolved.config_files)?;
    r3s_config::logging::init(cfg.debug, std::env::var("RUST_LOG").ok().as_deref())?;
    // Two workers are plenty: the server is mostly waiting on SQLite and sockets, and on a
    // Raspberry Pi the cores are better left to the pods.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(r3s_server::run::run(cfg))?;
    Ok(())
}

fn token() -> ExitCode {
    use clap::Parser;
    let args = std::iter::once(std::ffi::OsString::from("r3s-server token"))
        .chain(std::env::args_os().skip(2));
    let cli = match r3s_server::join::command::TokenCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let run = || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(r3s_server::join::command::run(cli))?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(BIN, &r3s_config::exit::chain(err.as_ref())),
    }
}

fn certificate() -> ExitCode {
    use clap::Parser;
    use r3s_server::cli::{CertificateCli, CertificateCommand};
    let args = std::iter::once(std::ffi::OsString::from("r3s-server certificate"))
        .chain(std::env::args_os().skip(2));
    let cli = match CertificateCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let CertificateCommand::Rotate { data_dir, service } = cli.command;
    match r3s_server::tls::renew::rotate(&data_dir, &service) {
        Ok(done) if done.is_empty() => {
            println!("no leaf certificates to rotate");
            ExitCode::SUCCESS
        }
        Ok(done) => {
            let names: Vec<String> = done
                .iter()
                .map(|r| format!("{} (serial {} -> {})", r.name, r.old_serial, r.new_serial))
                .collect();
            println!(
                "rotated {} certificates, CAs unchanged: {}; start r3s-server to serve them",
                done.len(),
                names.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(err) => fail(BIN, &r3s_config::exit::chain(&err)),
    }
}
