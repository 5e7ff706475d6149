//! Field sets: which fields of an object a manager owns, as a tree of path elements in upstream's
//! `FieldsV1` vocabulary (`f:<field>`, `k:{"name":"a"}` for an element of a keyed list,
//! `v:<json>` for an element of a set, `i:<n>` for a positional element).
//!
//! A node is a *member* when the path ending there is in the set; a node may also have children
//! (a map owned as a whole and some of its fields). In `FieldsV1` JSON a member with children carries
//! `".": {}` and a member without children is `{}`. Invariant: no child node is empty (neither a
//! member nor holding members); every operation prunes empty children, so `==` is set equality.
//!
//! How values turn into sets ([`FieldSet::of`]) and how two objects differ ([`diff`]) depends on the
//! list kinds, which [`Shape`] takes from the strategic-merge-patch merge-key table for built-in kinds;
//! custom resources have atomic lists (upstream's default without `x-kubernetes-list-type`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::api::smp::{self, Strategy};

/// A set of field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// One path: its elements from the object root, e.g. `["f:spec", "f:replicas"]`.
pub type Path = Vec<String>;

/// A `FieldsV1` document that is not a tree of objects with valid path elements.
#[derive(Debug, thiserror::Error)]
#[error("invalid fieldsV1 at {at:?}: {why}")]
pub struct DecodeError {
    pub at: String,
    pub why: &'static str,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn child(&mut self, element: String) -> &mut FieldSet {
        self.children.entry(element).or_default()
    }

    /// Removes empty children (restoring the invariant after building a node in place).
    fn prune(&mut self) {
        self.children.retain(|_, c| {
            c.prune();
            !c.is_empty()
        });
    }

    pub fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.child(first.clone()).insert(rest),
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.contains(rest)),
        }
    }

    /// True if the set holds `path` or any path below it.
    pub fn has_at_or_below(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => !self.is_empty(),
            Some((first, rest)) => self
                .children
                .get(first)
                .is_some_and(|c| c.has_at_or_below(rest)),
        }
    }

    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (element, theirs) in &other.children {
            self.child(element.clone()).union(theirs);
        }
    }

    /// The paths of `self` that are not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (element, mine) in &self.children {
            let rest = match other.children.get(element) {
                Some(theirs) => mine.difference(theirs),
                None => mine.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(element.clone(), rest);
            }
        }
        out
    }

    /// The paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (element, mine) in &self.children {
            if let Some(theirs) = other.children.get(element) {
                let both = mine.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(element.clone(), both);
                }
            }
        }
        out
    }

    /// Every member path, parents before children, in element order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (element, child) in &self.children {
            prefix.push(element.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Keeps only the paths that exist in `obj` (fields removed by a write lose their owners).
    pub fn retain_present(&mut self, obj: &Value) {
        self.children
            .retain(|element, child| match lookup(obj, element) {
                Some(value) => {
                    child.retain_present(value);
                    !child.is_empty()
                }
                None => false,
            });
    }

    /// The `FieldsV1` JSON form.
    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), json!({}));
        }
        for (element, child) in &self.children {
            map.insert(element.clone(), child.to_fields_v1());
        }
        Value::Object(map)
    }

    /// Parses the `FieldsV1` JSON form.
    pub fn from_fields_v1(doc: &Value) -> Result<FieldSet, DecodeError> {
        let mut set = FieldSet::default();
        set.read(doc, "")?;
        // The root itself is never a member: an empty document is the empty set.
        set.member = false;
        Ok(set)
    }

    fn read(&mut self, doc: &Value, at: &str) -> Result<(), DecodeError> {
        let map = doc.as_object().ok_or_else(|| DecodeError {
            at: at.to_string(),
            why: "not an object",
        })?;
        if map.is_empty() {
            self.member = true;
        }
        for (element, value) in map {
            if element == "." {
                self.member = true;
                continue;
            }
            let known = ["f:", "k:", "v:", "i:"]
                .iter()
                .any(|prefix| element.starts_with(prefix));
            if !known {
                return Err(DecodeError {
                    at: format!("{at}/{element}"),
                    why: "unknown path element",
                });
            }
            self.child(element.clone())
                .read(value, &format!("{at}/{element}"))?;
        }
        Ok(())
    }
}

/// The child of `obj` a path element names, if present.
pub fn lookup<'a>(obj: &'a Value, element: &str) -> Option<&'a Value> {
    if let Some(field) = element.strip_prefix("f:") {
        return obj.as_object()?.get(field);
    }
    let list = obj.as_array()?;
    if let Some(keys) = element.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(keys).ok()?;
        return list
            .iter()
            .find(|item| keys.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    if let Some(value) = element.strip_prefix("v:") {
        let value: Value = serde_json::from_str(value).ok()?;
        return list.iter().find(|item| **item == value);
    }
    let index: usize = element.strip_prefix("i:")?.parse().ok()?;
    list.get(index)
}

/// A path as upstream prints it in conflict messages: `.spec.template.spec.containers[name="a"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(field) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(keys) = element.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(keys).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = element.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        } else if let Some(index) = element.strip_prefix("i:") {
            out.push_str(&format!("[{index}]"));
        }
    }
    out
}

/// How lists and maps of an object are structured, which decides how they split into paths.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// A built-in kind: lists follow the merge-key table. Custom resources: lists are atomic.
    pub builtin: bool,
}

/// The structure of one list field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// Elements are maps identified by this field.
    Keyed(&'static str),
    /// Elements are distinct scalars.
    Set,
    /// The list is one value.
    Atomic,
}

/// Maps that are one value (upstream's `mapType=atomic`/`structType=atomic` for the fields people
/// apply): label selectors and node selectors.
const ATOMIC_MAPS: &[&str] = &["selector", "nodeSelector"];

/// Walking context: the field holding the current map (the merge-key table's `context`) and
/// whether the merge-key table applies here.
#[derive(Clone, Copy)]
struct At<'a> {
    context: Option<&'a str>,
    typed: bool,
}

impl Shape {
    fn list(self, at: At<'_>, field: &str) -> ListKind {
        if !at.typed {
            return ListKind::Atomic;
        }
        match smp::strategy(at.context, field) {
            Strategy::Key(key) => ListKind::Keyed(key),
            Strategy::Set => ListKind::Set,
            Strategy::Replace => ListKind::Atomic,
        }
    }

    fn atomic_map(self, at: At<'_>, field: &str) -> bool {
        at.typed && ATOMIC_MAPS.contains(&field)
    }

    /// The element name of a list item, or `None` when the item cannot be keyed (then the list is
    /// handled as atomic).
    fn item_element(kind: ListKind, item: &Value) -> Option<String> {
        match kind {
            ListKind::Keyed(key) => {
                let id = item.as_object()?.get(key)?;
                Some(format!("k:{}", json!({ key: id })))
            }
            ListKind::Set => Some(format!("v:{item}")),
            ListKind::Atomic => None,
        }
    }

    fn list_kind_of(self, at: At<'_>, field: &str, items: &[&Value]) -> ListKind {
        let kind = self.list(at, field);
        if items
            .iter()
            .all(|item| Self::item_element(kind, item).is_some())
        {
            kind
        } else {
            ListKind::Atomic
        }
    }

    /// The child context of a field: the metadata of custom resources is typed like built-ins.
    fn enter<'a>(self, at: At<'a>, field: &'a str) -> At<'a> {
        At {
            context: Some(field),
            typed: at.typed || (at.context.is_none() && field == "metadata"),
        }
    }

    fn root(self) -> At<'static> {
        At {
            context: None,
            typed: self.builtin,
        }
    }

    /// Every leaf (and keyed or set list element) path of `obj`, a map at the object root.
    pub fn of(self, obj: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(map) = obj.as_object() {
            self.walk_map(map, self.root(), false, &mut set);
        }
        set.prune();
        set
    }

    fn walk_map(self, map: &Map<String, Value>, at: At<'_>, added: bool, node: &mut FieldSet) {
        for (field, value) in map {
            self.walk_field(value, at, field, added, node.child(format!("f:{field}")));
        }
    }

    /// Fills `node`, the node of `field` (holding `value`) in a map at `at`. `added`: the value is
    /// new in an update, so its maps are members too, except `metadata`, `spec` and `status`: like
    /// upstream's always-present structs, they never appear as added.
    fn walk_field(self, value: &Value, at: At<'_>, field: &str, added: bool, node: &mut FieldSet) {
        match value {
            Value::Object(map) if !map.is_empty() && !self.atomic_map(at, field) => {
                node.member |= added
                    && (at.context.is_some() || !["metadata", "spec", "status"].contains(&field));
                self.walk_map(map, self.enter(at, field), added, node);
            }
            Value::Array(items) if !items.is_empty() => {
                let refs: Vec<&Value> = items.iter().collect();
                let kind = self.list_kind_of(at, field, &refs);
                if kind == ListKind::Atomic {
                    node.member = true;
                    return;
                }
                for item in items {
                    self.walk_item(item, kind, self.enter(at, field), added, node);
                }
            }
            _ => node.member = true,
        }
    }

    fn walk_item(self, item: &Value, kind: ListKind, at: At<'_>, added: bool, list: &mut FieldSet) {
        let Some(element) = Self::item_element(kind, item) else {
            return;
        };
        let node = list.child(element);
        node.member = true;
        if let (ListKind::Keyed(_), Some(map)) = (kind, item.as_object()) {
            self.walk_map(map, at, added, node);
        }
    }

    /// The paths a write from `old` to `new` sets (added or changed; removed paths are dropped
    /// from every owner by [`FieldSet::retain_present`]). An added map or list element is a
    /// member itself, as upstream records it (`".": {}`).
    pub fn changed(self, old: &Value, new: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let (Some(old), Some(new)) = (old.as_object(), new.as_object()) {
            self.diff_map(old, new, self.root(), &mut set);
        }
        set.prune();
        set
    }

    fn diff_map(
        self,
        old: &Map<String, Value>,
        new: &Map<String, Value>,
        at: At<'_>,
        node: &mut FieldSet,
    ) {
        for (field, value) in new {
            let child = node.child(format!("f:{field}"));
            match old.get(field) {
                Some(before) => self.diff_field(before, value, at, field, child),
                None => {
                    // A scalar or list is a member itself; a map when it is nested.
                    child.member = !value.is_object();
                    self.walk_field(value, at, field, true, child);
                }
            }
        }
    }

    fn diff_field(self, old: &Value, new: &Value, at: At<'_>, field: &str, node: &mut FieldSet) {
        if old == new {
            return;
        }
        match (old, new) {
            (Value::Object(o), Value::Object(n)) if !self.atomic_map(at, field) => {
                self.diff_map(o, n, self.enter(at, field), node);
            }
            (Value::Array(o), Value::Array(n)) => {
                let all: Vec<&Value> = o.iter().chain(n.iter()).collect();
                let kind = self.list_kind_of(at, field, &all);
                if kind == ListKind::Atomic {
                    node.member = true;
                    return;
                }
                let inner = self.enter(at, field);
                for item in n {
                    let Some(element) = Self::item_element(kind, item) else {
                        continue;
                    };
                    let before = o
                        .iter()
                        .find(|x| Self::item_element(kind, x).as_deref() == Some(&element));
                    match (before, kind, item) {
                        (Some(b), ListKind::Keyed(_), Value::Object(nm)) => {
                            if let Value::Object(bm) = b {
                                self.diff_map(bm, nm, inner, node.child(element));
                            }
                        }
                        (Some(_), _, _) => {}
                        (None, _, _) => self.walk_item(item, kind, inner, true, node),
                    }
                }
            }
            _ => node.member = true,
        }
    }
}

/// Removes the value at `path` from `obj` (a map field, a keyed list element or a set element).
/// Returns whether something was removed.
pub fn remove(obj: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cursor = obj;
    for element in parents {
        let Some(next) = lookup_mut(cursor, element) else {
            return false;
        };
        cursor = next;
    }
    if let Some(field) = last.strip_prefix("f:") {
        return cursor
            .as_object_mut()
            .is_some_and(|m| m.remove(field).is_some());
    }
    let Some(target) = lookup(cursor, last).cloned() else {
        return false;
    };
    match cursor.as_array_mut() {
        Some(list) => {
            let before = list.len();
            list.retain(|item| *item != target);
            list.len() != before
        }
        None => false,
    }
}

fn lookup_mut<'a>(obj: &'a mut Value, element: &str) -> Option<&'a mut Value> {
    if let Some(field) = element.strip_prefix("f:") {
        return obj.as_object_mut()?.get_mut(field);
    }
    let found = lookup(obj, element)?.clone();
    obj.as_array_mut()?.iter_mut().find(|item| **item == found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILTIN: Shape = Shape { builtin: true };

    fn path(elements: &[&str]) -> Path {
        elements.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn deployment_config_becomes_upstream_fields_v1() {
        let config = json!({"metadata":{"labels":{"app":"web"}},"spec":{"replicas":2,
            "selector":{"matchLabels":{"app":"web"}},
            "template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1","args":["a"]}]}}}});
        let set = BUILTIN.of(&config);
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},
                "f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{
                    ".":{},"f:args":{},"f:image":{},"f:name":{}}}}}}})
        );
        let back = FieldSet::from_fields_v1(&set.to_fields_v1()).expect("decodes");
        assert_eq!(back, set);
        assert!(set.contains(&path(&[
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"nginx\"}"
        ])));
    }

    #[test]
    fn set_operations_keep_the_invariant() {
        let a = BUILTIN.of(&json!({"data":{"x":"1","y":"2"},"metadata":{"finalizers":["f1"]}}));
        let b = BUILTIN.of(&json!({"data":{"x":"9"}}));
        let only_a = a.difference(&b);
        assert_eq!(
            only_a.to_fields_v1(),
            json!({"f:data":{"f:y":{}},"f:metadata":{"f:finalizers":{"v:\"f1\"":{}}}})
        );
        assert_eq!(
            a.intersection(&b).to_fields_v1(),
            json!({"f:data":{"f:x":{}}})
        );
        assert!(a.difference(&a).is_empty());
        assert!(a.has_at_or_below(&path(&["f:data"])));
    }

    #[test]
    fn changes_mark_added_maps_and_items_as_members() {
        let old = json!({"metadata":{"name":"x"},"spec":{"ports":[{"port":80,"name":"a"}]}});
        let new = json!({"metadata":{"name":"x","annotations":{"k":"v"}},
                         "spec":{"ports":[{"port":80,"name":"b"},{"port":443}]}});
        assert_eq!(
            BUILTIN.changed(&old, &new).to_fields_v1(),
            json!({"f:metadata":{"f:annotations":{".":{},"f:k":{}}},
                   "f:spec":{"f:ports":{"k:{\"port\":80}":{"f:name":{}},
                                        "k:{\"port\":443}":{".":{},"f:port":{}}}}})
        );
    }

    #[test]
    fn custom_resources_have_atomic_lists_but_typed_metadata() {
        let cr = Shape { builtin: false };
        let set =
            cr.of(&json!({"metadata":{"finalizers":["a"]},"spec":{"containers":[{"name":"x"}]}}));
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:metadata":{"f:finalizers":{"v:\"a\"":{}}},"f:spec":{"f:containers":{}}})
        );
    }

    #[test]
    fn display_and_remove() {
        let p = path(&["f:spec", "f:containers", "k:{\"name\":\"a\"}", "f:image"]);
        assert_eq!(display(&p), ".spec.containers[name=\"a\"].image");
        assert_eq!(
            display(&path(&["f:metadata", "f:finalizers", "v:\"x\""])),
            ".metadata.finalizers[=\"x\"]"
        );
        let mut obj = json!({"spec":{"containers":[{"name":"a","image":"i"},{"name":"b"}]}});
        assert!(remove(&mut obj, &p));
        assert!(remove(
            &mut obj,
            &path(&["f:spec", "f:containers", "k:{\"name\":\"b\"}"])
        ));
        assert_eq!(obj, json!({"spec":{"containers":[{"name":"a"}]}}));
        assert!(!remove(&mut obj, &path(&["f:nope"])));
    }

    #[test]
    fn retain_present_drops_removed_fields() {
        let mut set = BUILTIN.of(&json!({"data":{"a":"1","b":"2"}}));
        set.retain_present(&json!({"data":{"a":"1"}}));
        assert_eq!(set.to_fields_v1(), json!({"f:data":{"f:a":{}}}));
    }
}
