//! Merges the command line, `R3S_*` environment variables and the config file into one clap
//! parse, with k3s's precedence: flag, then environment, then file, then the flag's default.
//!
//! How: the command is parsed once as the user typed it (with clap's own env lookup switched off),
//! which tells which flags came from the command line. Every other flag takes its environment
//! value or, failing that, its file value; each of those is checked on its own against the flag's
//! value parser, so an error names the variable or the file and key it came from. Those values are
//! then put in front of the user's arguments as `--flag=value` and the whole is parsed again into
//! the derive struct, so the result has exactly the types and checks of a plain command line.
//!
//! Conventions the commands follow (checked where it matters):
//! - every flag has a long name; the config file's keys are those names (short names work too);
//! - the flag with the long name `config` names the config file and cannot be set in it;
//! - on/off flags are `ArgAction::SetTrue` with default false; from env or file they take
//!   `true`/`false` (also `1`/`0`, any case);
//! - no flag is `required` at the clap level (a value from env or file must be able to satisfy
//!   it); binaries check required settings after resolution;
//! - list flags (`ArgAction::Append`) split env and file values on their value delimiter, and a value
//!   from a higher-precedence source replaces the whole list rather than adding to it.
//!
//! The environment is passed in as a list of pairs, never read here, so tests need not touch the
//! process environment.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, Parser};

use crate::file::{self, Entry, FileError, Layer, Location, RawValue};

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The source of every flag, by long name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<String, Source>);

impl Sources {
    /// Where `--<long>` came from; `Default` for names the command does not have.
    pub fn get(&self, long: &str) -> &Source {
        self.0.get(long).unwrap_or(&Source::Default)
    }

    /// `--long`, followed by its origin when that was the environment or a file, for error
    /// messages: `--cluster-dns (from env R3S_CLUSTER_DNS)`.
    pub fn describe(&self, long: &str) -> String {
        match self.get(long) {
            Source::Flag | Source::Default => format!("--{long}"),
            other => format!("--{long} (from {other})"),
        }
    }

    /// `--long value`, followed by the value's origin when that was the environment or a file:
    /// `--cluster-dns 10.50.0.1 (from env R3S_CLUSTER_DNS)`.
    pub fn show(&self, long: &str, value: impl fmt::Display) -> String {
        match self.get(long) {
            Source::Flag | Source::Default => format!("--{long} {value}"),
            other => format!("--{long} {value} (from {other})"),
        }
    }

    /// For callers that resolve settings by other means than [`resolve`] (tests, subcommands).
    pub fn insert(&mut self, long: &str, source: Source) {
        self.0.insert(long.to_owned(), source);
    }
}

/// A parsed command with the origin of each value and the config files that were read.
#[derive(Debug)]
pub struct Resolved<C> {
    pub cli: C,
    pub sources: Sources,
    pub config_files: Vec<PathBuf>,
}

/// Why the configuration could not be resolved. Every variant displays as one line naming the
/// flag, variable, or file and key at fault; [`ConfigError::Help`] is not a failure (see
/// [`crate::exit`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help` or `--version`: clap's text, to be printed on stdout with exit status 0.
    #[error("{}", crate::exit::clap_one_line(.0))]
    Help(clap::Error),
    /// A bad command line, as clap reports it.
    #[error("{}", crate::exit::clap_one_line(.0))]
    Usage(clap::Error),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: unknown key {key:?}{}", file.display(), suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    UnknownKey {
        file: PathBuf,
        key: String,
        suggestion: Option<String>,
    },
    #[error("{}: key {key:?} cannot be set in a config file", file.display())]
    NotSettable { file: PathBuf, key: String },
    #[error("{}: key {key:?} has no value", file.display())]
    NoValue { file: PathBuf, key: String },
    #[error("{}: key {key:?} takes a single value, not a list", file.display())]
    NotAList { file: PathBuf, key: String },
    #[error("{}: key \"{key}+\": only list flags can be appended to, and --{key} takes a single value", file.display())]
    AppendToSingle { file: PathBuf, key: String },
    #[error("{}: key {key:?}: invalid value {value:?}: {reason}", file.display())]
    FileValue {
        file: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
    #[error("environment variable {var}: invalid value {value:?}: {reason}")]
    EnvValue {
        var: String,
        value: String,
        reason: String,
    },
    #[error("environment variable {var}: value is not valid UTF-8")]
    EnvNotUnicode { var: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Switch,
    Single,
    List,
}

/// What the resolver needs to know about one flag.
#[derive(Clone, Debug)]
struct Spec {
    id: String,
    long: String,
    short: Option<char>,
    env: Option<String>,
    kind: Kind,
    delimiter: Option<char>,
}

impl Spec {
    fn split(&self, value: &str) -> Vec<String> {
        match (self.kind, self.delimiter) {
            (Kind::List, Some(d)) => value.split(d).map(str::to_owned).collect(),
            _ => vec![value.to_owned()],
        }
    }
}

/// Parses `args` (program name first) for command `C`, taking unset flags from `env` and then
/// from the config file. See the module documentation for the rules.
pub fn resolve<C, A, E>(args: A, env: E) -> Result<Resolved<C>, ConfigError>
where
    C: Parser,
    A: IntoIterator,
    A::Item: Into<OsString>,
    E: IntoIterator<Item = (OsString, OsString)>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let env: HashMap<OsString, OsString> = env.into_iter().collect();
    let documented = C::command();
    let mut cmd = documented
        .clone()
        .mut_args(|arg| arg.env(None::<&'static str>));
    cmd.build();
    let bin = cmd.get_name().to_owned();
    let specs = specs(&documented);

    let typed = match cmd.clone().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(err) if is_help(&err) => return Err(ConfigError::Help(help(documented, &args, err))),
        Err(err) => return Err(ConfigError::Usage(err)),
    };
    let on_command_line =
        |spec: &Spec| typed.value_source(&spec.id) == Some(ValueSource::CommandLine);

    // Environment values, for every flag that has a variable set (checked even when a flag
    // overrides them: a bad variable left in a unit file is a mistake worth reporting).
    let mut from_env: HashMap<&str, (String, Vec<String>)> = HashMap::new();
    for spec in &specs {
        let Some(var) = &spec.env else { continue };
        let Some(raw) = env.get(OsStr::new(var)) else {
            continue;
        };
        let Some(value) = raw.to_str() else {
            return Err(ConfigError::EnvNotUnicode { var: var.clone() });
        };
        // Like clap, an empty variable counts as unset.
        if value.is_empty() {
            continue;
        }
        let values = spec.split(value);
        for v in &values {
            check(&cmd, spec, v).map_err(|reason| ConfigError::EnvValue {
                var: var.clone(),
                value: v.clone(),
                reason,
            })?;
        }
        from_env.insert(&spec.id, (var.clone(), values));
    }

    let layer = match config_location(&specs, &typed, &from_env) {
        Some(location) => file::read(&location)?,
        None => Layer::default(),
    };
    let from_file = merge_file(&cmd, &specs, &layer.entries)?;

    let mut sources = Sources::default();
    let mut merged: Vec<OsString> =
        vec![args.first().cloned().unwrap_or_else(|| bin.clone().into())];
    for spec in &specs {
        let (source, values) = if on_command_line(spec) {
            sources.insert(&spec.long, Source::Flag);
            continue;
        } else if let Some((var, values)) = from_env.get(spec.id.as_str()) {
            (Source::Env(var.clone()), values.clone())
        } else if let Some((file, values)) = from_file.get(spec.id.as_str()) {
            (Source::File(file.clone()), values.clone())
        } else {
            sources.insert(&spec.long, Source::Default);
            continue;
        };
        sources.insert(&spec.long, source);
        for value in values {
            match spec.kind {
                // Checked above, so only `true` needs a token: a switch is off unless given.
                Kind::Switch if parse_switch(&value) == Some(true) => {
                    merged.push(format!("--{}", spec.long).into())
                }
                Kind::Switch => {}
                Kind::Single | Kind::List => merged.push(format!("--{}={value}", spec.long).into()),
            }
        }
    }
    merged.extend(args.iter().skip(1).cloned());

    let matches = cmd
        .try_get_matches_from(merged)
        .map_err(ConfigError::Usage)?;
    let cli = C::from_arg_matches(&matches).map_err(ConfigError::Usage)?;
    Ok(Resolved {
        cli,
        sources,
        config_files: layer.files,
    })
}

fn specs(cmd: &Command) -> Vec<Spec> {
    cmd.get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?.to_owned();
            let kind = match arg.get_action() {
                ArgAction::SetTrue => Kind::Switch,
                ArgAction::Append => Kind::List,
                ArgAction::Set => Kind::Single,
                // Help, version, counters and the like are never taken from env or file.
                _ => return None,
            };
            Some(Spec {
                id: arg.get_id().to_string(),
                long,
                short: arg.get_short(),
                env: arg.get_env().and_then(OsStr::to_str).map(str::to_owned),
                kind,
                delimiter: arg.get_value_delimiter(),
            })
        })
        .collect()
}

fn is_help(err: &clap::Error) -> bool {
    use clap::error::ErrorKind::*;
    matches!(
        err.kind(),
        DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
    )
}

/// Help text from the command as declared, so `--help` shows each flag's environment variable
/// (values hidden: they may hold a token).
fn help(documented: Command, args: &[OsString], fallback: clap::Error) -> clap::Error {
    documented
        .mut_args(|arg| arg.hide_env_values(true))
        .try_get_matches_from(args)
        .err()
        .unwrap_or(fallback)
}

/// The config file: `--config` if typed, else its variable, else its default (which may be absent).
fn config_location(
    specs: &[Spec],
    typed: &ArgMatches,
    from_env: &HashMap<&str, (String, Vec<String>)>,
) -> Option<Location> {
    let spec = specs.iter().find(|s| s.long == "config")?;
    let raw_first = || {
        typed
            .get_raw(&spec.id)
            .and_then(|mut values| values.next())
            .map(PathBuf::from)
    };
    if typed.value_source(&spec.id) == Some(ValueSource::CommandLine) {
        return raw_first().map(|path| Location {
            path,
            explicit: true,
        });
    }
    if let Some((_, values)) = from_env.get(spec.id.as_str()) {
        return values.first().map(|v| Location {
            path: PathBuf::from(v),
            explicit: true,
        });
    }
    raw_first().map(|path| Location {
        path,
        explicit: false,
    })
}

/// Applies the file entries in order: a plain key replaces, `key+` appends. Returns each flag's
/// values and the last file that touched them.
fn merge_file<'a>(
    cmd: &Command,
    specs: &'a [Spec],
    entries: &[Entry],
) -> Result<HashMap<&'a str, (PathBuf, Vec<String>)>, ConfigError> {
    let mut merged: HashMap<&str, (PathBuf, Vec<String>)> = HashMap::new();
    for entry in entries {
        let file = || entry.file.clone();
        let key = || entry.key.clone();
        let spec = specs
            .iter()
            .find(|s| {
                s.long == entry.key
                    || (entry.key.chars().count() == 1 && s.short == entry.key.chars().next())
            })
            .ok_or_else(|| ConfigError::UnknownKey {
                file: file(),
                key: key(),
                suggestion: suggest(&entry.key, specs.iter().map(|s| s.long.as_str())),
            })?;
        if spec.long == "config" {
            return Err(ConfigError::NotSettable {
                file: file(),
                key: key(),
            });
        }
        if entry.append && spec.kind != Kind::List {
            return Err(ConfigError::AppendToSingle {
                file: file(),
                key: spec.long.clone(),
            });
        }
        let values = match &entry.value {
            RawValue::Null => {
                return Err(ConfigError::NoValue {
                    file: file(),
                    key: key(),
                });
            }
            RawValue::Scalar(s) => spec.split(s),
            RawValue::List(_) if spec.kind != Kind::List => {
                return Err(ConfigError::NotAList {
                    file: file(),
                    key: key(),
                });
            }
            RawValue::List(items) => items.iter().flat_map(|item| spec.split(item)).collect(),
        };
        for value in &values {
            check(cmd, spec, value).map_err(|reason| ConfigError::FileValue {
                file: file(),
                key: key(),
                value: value.clone(),
                reason,
            })?;
        }
        let slot = merged
            .entry(spec.id.as_str())
            .or_insert_with(|| (file(), Vec::new()));
        slot.0 = file();
        if entry.append {
            slot.1.extend(values);
        } else {
            slot.1 = values;
        }
    }
    Ok(merged)
}

/// `true`/`false`, also `1`/`0`, any case.
fn parse_switch(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Checks one value against the flag's own parser by parsing `--flag=value` alone.
fn check(cmd: &Command, spec: &Spec, value: &str) -> Result<(), String> {
    if spec.kind == Kind::Switch {
        return parse_switch(value)
            .map(|_| ())
            .ok_or_else(|| "expected true or false".to_owned());
    }
    let argv = [
        cmd.get_name().to_owned(),
        format!("--{}={value}", spec.long),
    ];
    // A derive field's FromStr runs inside clap's value parser, so parsing is the whole check.
    cmd.clone()
        .try_get_matches_from(argv)
        .map(|_| ())
        .map_err(|err| reason(&err))
}

/// The part of a clap error that explains the value, without clap's "invalid value ... for ..." frame.
fn reason(err: &clap::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => source.to_string(),
        None => crate::exit::clap_one_line(err),
    }
}

/// The closest known name to `unknown`, if it is close enough to be a likely typo.
fn suggest<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    known
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_owned())
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
