//! ConfigMap and Secret content for volumes (plain `configMap`/`secret` volumes and the sources of
//! `projected` ones): the object's keys read from the API, then `items` (key → path, mode) applied
//! as kubelet does. A missing object is an error unless the reference is `optional`; an item naming
//! a missing key is one too, with kubelet's wording, unless `optional`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret};
use kube::Api;

use super::VolumeError;
use super::atomic::File;

/// Which kind of object a volume reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// The keys of the object `name` in `ns`; `None` when it is missing and `optional`.
pub async fn read(
    client: &kube::Client,
    kind: Kind,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    let api_error = |source: kube::Error| VolumeError::Api {
        kind: kind.name(),
        namespace: ns.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    let data = match kind {
        Kind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            api.get_opt(name).await.map_err(api_error)?.map(|cm| {
                let mut d: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    d.insert(k, v.0);
                }
                d
            })
        }
        Kind::Secret => {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            api.get_opt(name).await.map_err(api_error)?.map(|s| {
                let mut d: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    d.insert(k, v.into_bytes());
                }
                d
            })
        }
    };
    match data {
        Some(d) => Ok(Some(d)),
        None if optional => Ok(None),
        None => Err(VolumeError::Missing {
            kind: kind.name(),
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
    }
}

/// The files of a volume (or projected source) from `data`: every key under its own name with
/// `default_mode`, or only `items`, each at its path with its own mode or `default_mode`.
pub fn select(
    kind: Kind,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Vec<File>, VolumeError> {
    let mode = |m: Option<i32>| (m.unwrap_or(default_mode) as u32) & 0o777;
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(data
            .iter()
            .map(|(k, d)| File {
                path: k.clone(),
                data: d.clone(),
                mode: mode(None),
            })
            .collect());
    };
    let mut files = Vec::new();
    for item in items {
        match data.get(&item.key) {
            Some(d) => files.push(File {
                path: item.path.clone(),
                data: d.clone(),
                mode: mode(item.mode),
            }),
            None if optional => {}
            None => {
                return Err(VolumeError::MissingKey {
                    kind: kind.name(),
                    key: item.key.clone(),
                });
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_pick_rename_and_set_modes() {
        let data: BTreeMap<String, Vec<u8>> = [("a", "1"), ("b", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let all = select(Kind::ConfigMap, &data, None, 0o644, false).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|f| f.mode == 0o644));
        let items: Vec<KeyToPath> = serde_json::from_value(serde_json::json!([
            {"key": "b", "path": "sub/renamed", "mode": 0o400}
        ]))
        .unwrap();
        let some = select(Kind::Secret, &data, Some(&items), 0o644, false).unwrap();
        assert_eq!(
            some,
            vec![File {
                path: "sub/renamed".into(),
                data: b"2".to_vec(),
                mode: 0o400
            }]
        );
        let missing: Vec<KeyToPath> =
            serde_json::from_value(serde_json::json!([{"key": "zz", "path": "x"}])).unwrap();
        let err = select(Kind::ConfigMap, &data, Some(&missing), 0o644, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configmap references non-existent config key: zz"
        );
        assert!(
            select(Kind::ConfigMap, &data, Some(&missing), 0o644, true)
                .unwrap()
                .is_empty()
        );
    }
}
