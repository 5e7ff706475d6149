//! The config file layer: `config.yaml` plus its drop-in directory, read into ordered entries.
//!
//! Layout, as k3s has it: the main file (`--config`, default `/etc/r3s/config.yaml`) is a YAML
//! mapping whose keys are long flag names; then every regular file named `*.yaml` or `*.yml` in
//! `<config>.d/` is read in file-name order. A key ending in `+` (`node-label+:`) appends to what
//! earlier files gave that key instead of replacing it. This module only reads and shapes the files;
//! [`crate::resolve`] checks keys and values against the command and applies the `+` merging.
//!
//! Invariants: entries come out in the order they apply (main file first, drop-ins by name, keys in
//! file order); every error names the file it is about.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use verbatim::Shape;

mod verbatim;

/// One `key: value` line of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The file this entry came from.
    pub file: PathBuf,
    /// The key without its `+` suffix.
    pub key: String,
    /// Whether the key was written `key+`.
    pub append: bool,
    pub value: RawValue,
}

/// A value as written in YAML, turned into strings the way a command line would carry them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawValue {
    /// `key:` with nothing after it.
    Null,
    Scalar(String),
    List(Vec<String>),
}

/// Why the config files could not be read; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: config file not found", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: is a directory, not a config file", path.display())]
    IsDirectory { path: PathBuf },
    #[error("{}: cannot read config file: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("{}: cannot list drop-in directory: {source}", path.display())]
    DropInDir { path: PathBuf, source: io::Error },
    #[error("{}: invalid YAML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: expected a mapping of flag names to values", path.display())]
    NotMapping { path: PathBuf },
    #[error("{}: key {key}: keys must be flag names", path.display())]
    KeyNotString { path: PathBuf, key: String },
    #[error("{}: key {key:?}: expected a value or a list of values", path.display())]
    Nested { path: PathBuf, key: String },
}

/// Where the config comes from, and whether the user named it (a missing named file is an error,
/// a missing default file is not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub explicit: bool,
}

/// The files read, in order, and their entries, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    pub files: Vec<PathBuf>,
    pub entries: Vec<Entry>,
}

/// Reads the main file and its drop-ins.
pub fn read(location: &Location) -> Result<Layer, FileError> {
    let mut files = Vec::new();
    let path = &location.path;
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(FileError::IsDirectory { path: path.clone() }),
        Ok(_) => files.push(path.clone()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !location.explicit => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FileError::NotFound { path: path.clone() });
        }
        Err(source) => {
            return Err(FileError::Unreadable {
                path: path.clone(),
                source,
            });
        }
    }
    files.extend(drop_ins(path)?);

    let mut layer = Layer::default();
    for file in files {
        let text = fs::read(&file).map_err(|source| FileError::Unreadable {
            path: file.clone(),
            source,
        })?;
        layer.entries.extend(parse(&file, &text)?);
        layer.files.push(file);
    }
    Ok(layer)
}

/// `<config>.d/*.yaml` and `*.yml` (any case), regular files (or links to them), sorted by name.
fn drop_ins(config: &Path) -> Result<Vec<PathBuf>, FileError> {
    let mut dir = config.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let listing = match fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(FileError::DropInDir { path: dir, source }),
    };
    let mut found = Vec::new();
    for item in listing {
        let item = item.map_err(|source| FileError::DropInDir {
            path: dir.clone(),
            source,
        })?;
        let name = item.file_name().to_string_lossy().to_lowercase();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = item.path();
        // fs::metadata follows links, so a link to a file counts and a directory named x.yaml does not.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => found.push(path),
            Err(source) => return Err(FileError::Unreadable { path, source }),
        }
    }
    found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(found)
}

fn parse(file: &Path, text: &[u8]) -> Result<Vec<Entry>, FileError> {
    let syntax = |e: serde_yaml::Error| FileError::Syntax {
        path: file.to_owned(),
        message: e.to_string(),
    };
    // First read: the document's shape, checked (a mapping of names to scalars or lists).
    let doc: Value = serde_yaml::from_slice(text).map_err(syntax)?;
    let mapping = match doc {
        // An empty file (or one holding only comments) sets nothing.
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(mapping) => mapping,
        _ => {
            return Err(FileError::NotMapping {
                path: file.to_owned(),
            });
        }
    };
    let mut shapes = Vec::with_capacity(mapping.len());
    for (key, value) in &mapping {
        let Value::String(key) = key else {
            return Err(FileError::KeyNotString {
                path: file.to_owned(),
                key: scalar(key).unwrap_or_else(|| format!("{key:?}")),
            });
        };
        let nested = || FileError::Nested {
            path: file.to_owned(),
            key: key.clone(),
        };
        shapes.push(match value {
            Value::Null => Shape::Null,
            Value::Sequence(items) if items.iter().all(|i| scalar(i).is_some()) => Shape::List,
            Value::Sequence(_) => return Err(nested()),
            other if scalar(other).is_some() => Shape::Scalar,
            _ => return Err(nested()),
        });
    }
    // Second read: the same keys with every scalar exactly as written (see `verbatim`).
    let texts = verbatim::read(text, &shapes).map_err(syntax)?;
    Ok(texts
        .into_iter()
        .zip(shapes)
        .map(|((key, texts), shape)| {
            let value = match (shape, texts) {
                (Shape::List, Some(items)) => RawValue::List(items),
                (_, Some(mut one)) if one.len() == 1 => RawValue::Scalar(one.remove(0)),
                _ => RawValue::Null,
            };
            let (key, append) = match key.strip_suffix('+') {
                Some(stripped) => (stripped.to_owned(), true),
                None => (key, false),
            };
            Entry {
                file: file.to_owned(),
                key,
                append,
                value,
            }
        })
        .collect())
}

/// A YAML scalar as the string a command line would have carried.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(path: &Path, explicit: bool) -> Location {
        Location {
            path: path.to_owned(),
            explicit,
        }
    }

    #[test]
    fn reads_main_then_drop_ins_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.yaml");
        std::fs::write(&main, "a: 1\nb: [x, y]\nc: true\n").unwrap();
        let d = dir.path().join("config.yaml.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("20-b.yml"), "b+: z\n").unwrap();
        std::fs::write(d.join("10-a.YAML"), "a: 2\n").unwrap();
        std::fs::write(d.join("30-ignored.txt"), "not: read\n").unwrap();
        std::fs::create_dir(d.join("40-dir.yaml")).unwrap();

        let layer = read(&location(&main, true)).unwrap();
        assert_eq!(
            layer.files,
            vec![main.clone(), d.join("10-a.YAML"), d.join("20-b.yml")]
        );
        let got: Vec<_> = layer
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.append, e.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", false, RawValue::Scalar("1".into())),
                ("b", false, RawValue::List(vec!["x".into(), "y".into()])),
                ("c", false, RawValue::Scalar("true".into())),
                ("a", false, RawValue::Scalar("2".into())),
                ("b", true, RawValue::Scalar("z".into())),
            ]
        );
    }

    #[test]
    fn missing_default_is_fine_missing_explicit_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.yaml");
        assert_eq!(read(&location(&main, false)).unwrap(), Layer::default());
        let err = read(&location(&main, true)).unwrap_err();
        assert!(matches!(err, FileError::NotFound { .. }), "{err}");
        // Drop-ins still apply when the default main file is absent.
        std::fs::create_dir(dir.path().join("config.yaml.d")).unwrap();
        std::fs::write(dir.path().join("config.yaml.d/a.yaml"), "k: v\n").unwrap();
        assert_eq!(read(&location(&main, false)).unwrap().entries.len(), 1);
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&location(dir.path(), true)).unwrap_err();
        assert!(matches!(err, FileError::IsDirectory { .. }), "{err}");

        let file = dir.path().join("c.yaml");
        for (text, want) in [
            ("a: [1\n", "invalid YAML"),
            ("- a\n- b\n", "expected a mapping"),
            ("a: {b: c}\n", "expected a value or a list"),
            ("a: [[1]]\n", "expected a value or a list"),
            ("1: x\n", "keys must be flag names"),
            ("a: 1\na: 2\n", "invalid YAML"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = read(&location(&file, true)).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: ", file.display())), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
        std::fs::write(&file, "# only a comment\n").unwrap();
        assert!(read(&location(&file, true)).unwrap().entries.is_empty());
    }

    #[test]
    fn scalars_keep_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "token: 00123\nwrite-kubeconfig-mode: 0o600\nnode-label: [a=01]\n",
        )
        .unwrap();
        let layer = read(&location(&file, true)).unwrap();
        let got: Vec<_> = layer.entries.into_iter().map(|e| e.value).collect();
        assert_eq!(
            got,
            vec![
                RawValue::Scalar("00123".into()),
                RawValue::Scalar("0o600".into()),
                RawValue::List(vec!["a=01".into()]),
            ]
        );
    }

    #[test]
    fn unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        // A symlink loop cannot be opened even by root, unlike a chmod 000 file.
        let a = dir.path().join("a.yaml");
        std::os::unix::fs::symlink(dir.path().join("b.yaml"), &a).unwrap();
        std::os::unix::fs::symlink(&a, dir.path().join("b.yaml")).unwrap();
        let err = read(&location(&a, true)).unwrap_err();
        assert!(matches!(err, FileError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("cannot read config file"), "{err}");
    }
}
