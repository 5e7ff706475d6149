//! How both binaries end on a configuration or start-up error: one line on stderr, exit status 1.
//!
//! Invariant: whatever the error (clap's multi-line usage errors, YAML errors, an `anyhow` chain),
//! the user sees exactly one line, `<binary>: <what is wrong>`, which is what a systemd journal or a
//! test can match on. `--help` and `--version` are not errors: their text goes to stdout, status 0.

use std::fmt::Display;
use std::process::ExitCode;

use crate::resolve::ConfigError;

/// Collapses any message to a single line (newlines and the indentation after them become "; ").
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Prints `<bin>: <err>` as one line on stderr and returns the failure status.
pub fn fail(bin: &str, err: &dyn Display) -> ExitCode {
    eprintln!("{bin}: {}", one_line(&err.to_string()));
    ExitCode::FAILURE
}

/// Ends a failed [`crate::resolve()`]: help and version text to stdout with success, anything else
/// through [`fail`].
pub fn config_failure(bin: &str, err: ConfigError) -> ExitCode {
    match err {
        // clap knows the right stream and status: stdout and 0 for --help and --version.
        ConfigError::Help(help) => match help.print() {
            Ok(()) => ExitCode::from(u8::try_from(help.exit_code()).unwrap_or(1)),
            Err(e) => fail(bin, &e),
        },
        other => fail(bin, &other),
    }
}

/// An error and its causes as one line, `outer: cause: root cause`, leaving out a cause whose text
/// the message before it already contains (r3s errors print their cause themselves, and
/// `anyhow`'s `{:#}` would otherwise repeat it). The one implementation in the workspace: the
/// images and CNI crates use it for their error messages too.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(source) = cause {
        let text = source.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = source.source();
    }
    one_line(&line)
}

/// A clap error as one line: its first line without the `error: ` prefix, plus any `tip:` lines,
/// leaving out the usage block and the "For more information" pointer.
pub(crate) fn clap_one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid command line");
    let first = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    let tips: Vec<&str> = lines.filter(|l| l.starts_with("tip:")).collect();
    if tips.is_empty() {
        first
    } else {
        format!("{first} ({})", tips.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_lines() {
        assert_eq!(one_line("a\n\n  b\nc\n"), "a; b; c");
        assert_eq!(one_line("single"), "single");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Read {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting up")]
    struct Outer(#[source] Read);

    #[test]
    fn chains_without_repeats() {
        let read = || Read {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(chain(&read()), "cannot read /x: entity not found");
        assert_eq!(
            chain(&Outer(read())),
            "starting up: cannot read /x: entity not found"
        );
    }

    #[test]
    fn clap_errors_become_one_line() {
        let cmd = clap::Command::new("x").arg(clap::Arg::new("cluster-cidr").long("cluster-cidr"));
        let err = cmd
            .try_get_matches_from(["x", "--cluster-cidrs", "a"])
            .unwrap_err();
        let line = clap_one_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("unexpected argument '--cluster-cidrs' found"),
            "{line}"
        );
        assert!(line.contains("--cluster-cidr"), "{line}");
    }
}
