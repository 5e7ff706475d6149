//! `metadata.managedFields`: one entry per manager identity (manager name, operation, API version,
//! subresource) with the set of fields it owns.
//!
//! Invariant: written entries are sorted as upstream sorts them (Apply before Update, then by time,
//! then by manager name), no entry has an empty set, and an object with no entries has no
//! `managedFields` key.

use serde_json::{Value, json};

use super::fieldset::FieldSet;

/// The two operations a manager's fields come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    /// Empty for the main resource.
    pub subresource: String,
    pub fields: FieldSet,
}

impl Entry {
    /// Whether `self` is the entry of this identity (the key upstream merges entries by).
    pub fn is(&self, manager: &str, operation: Operation, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    /// The manager as upstream names it in conflict messages.
    pub fn describe(&self) -> String {
        let mut text = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            text.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            text.push_str(&format!(" using {}", self.api_version));
            if let Some(time) = &self.time {
                text.push_str(&format!(" at {time}"));
            }
        }
        text
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(time) = &self.time {
            entry["time"] = json!(time);
        }
        if !self.subresource.is_empty() {
            entry["subresource"] = json!(self.subresource);
        }
        entry
    }

    fn from_json(entry: &Value) -> Option<Entry> {
        let operation = match entry["operation"].as_str()? {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            _ => return None,
        };
        if entry["fieldsType"]
            .as_str()
            .is_some_and(|t| t != "FieldsV1")
        {
            return None;
        }
        Some(Entry {
            manager: entry["manager"].as_str().unwrap_or("").to_string(),
            operation,
            api_version: entry["apiVersion"].as_str().unwrap_or("").to_string(),
            time: entry["time"].as_str().map(str::to_string),
            subresource: entry["subresource"].as_str().unwrap_or("").to_string(),
            fields: FieldSet::from_fields_v1(entry.get("fieldsV1").unwrap_or(&json!({}))).ok()?,
        })
    }
}

/// The entries of `obj`. A malformed list is dropped as a whole and an unreadable entry is
/// skipped (upstream resets managed fields it cannot decode rather than failing the write).
pub fn read(obj: &Value) -> Vec<Entry> {
    match obj["metadata"]["managedFields"].as_array() {
        Some(list) => list.iter().filter_map(Entry::from_json).collect(),
        None => Vec::new(),
    }
}

/// Writes `entries` into `obj` (sorted, empty ones dropped).
pub fn write(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (a.operation == Operation::Update)
            .cmp(&(b.operation == Operation::Update))
            .then_with(|| a.time.cmp(&b.time))
            .then_with(|| a.manager.cmp(&b.manager))
    });
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_json).collect()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_sort_apply_first() {
        let obj = json!({"metadata":{"managedFields":[
            {"manager":"kubectl-edit","operation":"Update","apiVersion":"v1","time":"2025-01-02T00:00:00Z",
             "fieldsType":"FieldsV1","fieldsV1":{"f:data":{"f:b":{}}}},
            {"manager":"kubectl","operation":"Apply","apiVersion":"v1","time":"2025-01-03T00:00:00Z",
             "fieldsType":"FieldsV1","fieldsV1":{"f:data":{"f:a":{}}}},
            {"manager":"broken","operation":"Sideways"}]}});
        let entries = read(&obj);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].describe(),
            "\"kubectl-edit\" using v1 at 2025-01-02T00:00:00Z"
        );
        let mut out = json!({"metadata":{}});
        write(&mut out, entries);
        assert_eq!(out["metadata"]["managedFields"][0]["manager"], "kubectl");
        assert_eq!(
            out["metadata"]["managedFields"][1]["fieldsV1"],
            json!({"f:data":{"f:b":{}}})
        );
        write(&mut out, Vec::new());
        assert!(out["metadata"].get("managedFields").is_none());
    }
}
