//! Server-side `Table` output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): column
//! definitions per kind, mimicking the apiserver's printers, and the conversion of objects to rows.
//!
//! A column's cell is a pure function of the object. `Name` is always first; priority-1 columns are
//! shown by kubectl only with `-o wide`. Rows carry the object as `PartialObjectMetadata` by default
//! (kubectl needs namespace and labels from it), the full object with `includeObject=Object`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// One table column.
#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub priority: u8,
    pub description: &'static str,
    pub cell: Cell,
}

/// How a column's cell is computed.
#[derive(Clone, Copy, Debug)]
pub enum Cell {
    /// Built-in kinds: a function of the object.
    Fn(fn(&Value) -> Value),
    /// CRD `additionalPrinterColumns`: a JSONPath into the object (see [`jsonpath`]); `date`
    /// columns show the time since, as upstream.
    Path(&'static str),
}

const fn col(name: &'static str, priority: u8, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "string",
        priority,
        description: "",
        cell: Cell::Fn(cell),
    }
}

const fn int(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "integer",
        priority: 0,
        description: "",
        cell: Cell::Fn(cell),
    }
}

const fn int_wide(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "integer",
        priority: 1,
        description: "",
        cell: Cell::Fn(cell),
    }
}

const AGE: Column = col("Age", 0, age);

mod columns;
pub mod jsonpath;

pub use columns::*;

/// What each row's `object` holds (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> IncludeObject {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// The column definitions of a table of `columns` (with the leading `Name`).
pub fn column_definitions(columns: &[Column]) -> Value {
    let mut defs = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    defs.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.kind, "format": "", "priority": c.priority,
               "description": c.description})
    }));
    Value::Array(defs)
}

/// The Name cell: the name, and for the default StorageClass ` (default)` after it, as upstream's
/// printer writes it.
fn name_cell(obj: &Value) -> Value {
    let annotations = &obj["metadata"]["annotations"];
    let default = obj["kind"] == "StorageClass"
        && [
            "storageclass.kubernetes.io/is-default-class",
            "storageclass.beta.kubernetes.io/is-default-class",
        ]
        .iter()
        .any(|a| annotations[*a] == "true");
    match obj["metadata"]["name"].as_str() {
        Some(name) if default => json!(format!("{name} (default)")),
        _ => obj["metadata"]["name"].clone(),
    }
}

/// One row for `obj`.
pub fn row(columns: &[Column], obj: &Value, include: IncludeObject) -> Value {
    let mut cells = vec![name_cell(obj)];
    cells.extend(columns.iter().map(|c| match c.cell {
        Cell::Fn(f) => f(obj),
        Cell::Path(path) => {
            let v = jsonpath::first(obj, path);
            if c.kind == "date" && !v.is_null() {
                since(&v)
            } else {
                v
            }
        }
    }));
    let mut row = json!({ "cells": cells });
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = obj.clone(),
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"].clone(),
            })
        }
    }
    row
}

/// A whole Table; `list_metadata` is the list's `{resourceVersion, continue}`.
pub fn table(
    columns: &[Column],
    objects: &[Value],
    include: IncludeObject,
    list_metadata: Value,
    with_definitions: bool,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": if with_definitions { column_definitions(columns) } else { json!([]) },
        "rows": objects.iter().map(|o| row(columns, o, include)).collect::<Vec<_>>(),
    })
}

fn age(o: &Value) -> Value {
    since(&o["metadata"]["creationTimestamp"])
}

/// The time since an RFC 3339 timestamp, as kubectl shows it.
fn since(t: &Value) -> Value {
    match t
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        Some(t) => json!(human_duration(
            (Utc::now() - t.with_timezone(&Utc)).num_seconds()
        )),
        None => json!("<unknown>"),
    }
}

/// kubectl's short human-readable durations (`45s`, `3m20s`, `5h`, `12d`, `2y30d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    let with = |big: i64, bu: &str, small: i64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        with(m, "m", secs % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(d, "d", h % 24, "h")
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        with(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }
}
