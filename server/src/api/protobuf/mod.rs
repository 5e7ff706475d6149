//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl 1.32's typed clients send for `create namespace|configmap|secret|serviceaccount|service|
//! deployment` and `auth can-i|whoami`. The body is the magic `k8s\0` followed by a `runtime.Unknown` message
//! (`typeMeta{apiVersion, kind}`, `raw`, `contentEncoding`, `contentType`); `raw` is the object,
//! decoded with the field tables of `schema` into the same JSON the client would have sent.
//!
//! Nothing is dropped silently: a field r3s has no table entry for is accepted only with its zero
//! value, otherwise the request fails with 415 naming the field, so the user can send JSON instead.

mod schema;
mod wire;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::DateTime;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use schema::{Msg, Ty};
use wire::{WireError, fields};

const MAGIC: &[u8] = b"k8s\0";

/// Decodes a protobuf-enveloped object into its JSON form (with `apiVersion` and `kind`).
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the k8s protobuf magic"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for item in fields(envelope) {
        match item.map_err(malformed)? {
            (1, wire::Value::Bytes(type_meta)) => {
                for tm in fields(type_meta) {
                    match tm.map_err(malformed)? {
                        (1, wire::Value::Bytes(v)) => api_version = utf8(v)?,
                        (2, wire::Value::Bytes(k)) => kind = utf8(k)?,
                        _ => {}
                    }
                }
            }
            (2, wire::Value::Bytes(bytes)) => raw = Some(bytes),
            (3, wire::Value::Bytes(encoding)) if !encoding.is_empty() => {
                return Err(unsupported(format!(
                    "protobuf content encoding {:?}",
                    String::from_utf8_lossy(encoding)
                )));
            }
            _ => {}
        }
    }
    let msg = schema::top_level(&api_version, &kind)
        .ok_or_else(|| unsupported(format!("protobuf bodies of {api_version} {kind}")))?;
    let mut obj = message(msg, raw.unwrap_or_default())?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

fn bad(why: &str) -> ApiError {
    ApiError::BadRequest(format!("invalid protobuf body: {why}"))
}

fn malformed(e: WireError) -> ApiError {
    bad(&e.to_string())
}

fn unsupported(what: String) -> ApiError {
    ApiError::UnsupportedMediaType(format!(
        "r3s cannot decode {what} yet; send the object as JSON or YAML (e.g. `kubectl create -f` or `kubectl apply -f` with a manifest)"
    ))
}

fn utf8(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string field is not UTF-8"))
}

fn message(msg: &Msg, data: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for item in fields(data) {
        let (num, value) = item.map_err(malformed)?;
        let Some(field) = msg.field(num) else {
            if value.is_zero() {
                continue;
            }
            return Err(unsupported(format!("field {num} of {}", msg.name)));
        };
        // A zero scalar is the field's default and can be left out, but a zero element of a
        // repeated field is data (`apiGroups: [""]`, the core group of `kubectl create role`).
        let repeated = matches!(field.ty, Ty::RepStr | Ty::RepMsg(_));
        if value.is_zero() && !field.presence && !repeated && !matches!(field.ty, Ty::Msg(_)) {
            continue;
        }
        let bytes = |v: wire::Value<'_>| match v {
            wire::Value::Bytes(b) => Ok(b.to_vec()),
            _ => Err(bad(&format!(
                "{}.{} must be length-delimited",
                msg.name, field.name
            ))),
        };
        let number = |v: wire::Value<'_>| match v {
            // Protobuf int32/int64 carry negatives as two's complement in 64 bits.
            wire::Value::Varint(n) => Ok(n as i64),
            _ => Err(bad(&format!(
                "{}.{} must be a varint",
                msg.name, field.name
            ))),
        };
        let name = field.name.to_string();
        match field.ty {
            Ty::Str => {
                out.insert(name, json!(utf8(&bytes(value)?)?));
            }
            Ty::Int => {
                out.insert(name, json!(number(value)?));
            }
            Ty::Bool => {
                out.insert(name, json!(number(value)? != 0));
            }
            Ty::Time => {
                if let Some(t) = time(&bytes(value)?)? {
                    out.insert(name, json!(t));
                }
            }
            Ty::IntOrString => {
                out.insert(name, int_or_string(&bytes(value)?)?);
            }
            Ty::Msg(inner) => {
                let decoded = message(inner, &bytes(value)?)?;
                if !decoded.is_empty() || field.presence {
                    out.insert(name, Value::Object(decoded));
                }
            }
            Ty::RepStr => push(&mut out, name, json!(utf8(&bytes(value)?)?)),
            Ty::RepMsg(inner) => push(
                &mut out,
                name,
                Value::Object(message(inner, &bytes(value)?)?),
            ),
            Ty::MapStr | Ty::MapBytes | Ty::MapQuantity => {
                let (key, val) = map_entry(field.ty, &bytes(value)?)?;
                let map = out.entry(name).or_insert_with(|| json!({}));
                if let Value::Object(map) = map {
                    map.insert(key, val);
                }
            }
        }
    }
    Ok(out)
}

fn push(out: &mut Map<String, Value>, name: String, value: Value) {
    let list = out.entry(name).or_insert_with(|| json!([]));
    if let Value::Array(list) = list {
        list.push(value);
    }
}

fn map_entry(ty: Ty, data: &[u8]) -> Result<(String, Value), ApiError> {
    let (mut key, mut value) = (String::new(), None);
    for item in fields(data) {
        match item.map_err(malformed)? {
            (1, wire::Value::Bytes(k)) => key = utf8(k)?,
            (2, wire::Value::Bytes(v)) => {
                value = Some(match ty {
                    Ty::MapBytes => json!(STANDARD.encode(v)),
                    Ty::MapQuantity => quantity(v)?,
                    _ => json!(utf8(v)?),
                })
            }
            _ => return Err(bad("malformed map entry")),
        }
    }
    Ok((key, value.unwrap_or_else(|| json!(""))))
}

fn time(data: &[u8]) -> Result<Option<String>, ApiError> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    for item in fields(data) {
        match item.map_err(malformed)? {
            (1, wire::Value::Varint(s)) => seconds = s as i64,
            (2, wire::Value::Varint(n)) => nanos = n as i64,
            _ => return Err(bad("malformed Time")),
        }
    }
    if seconds == 0 && nanos == 0 {
        return Ok(None);
    }
    let t = DateTime::from_timestamp(seconds, 0).ok_or_else(|| bad("Time out of range"))?;
    Ok(Some(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn quantity(data: &[u8]) -> Result<Value, ApiError> {
    for item in fields(data) {
        if let (1, wire::Value::Bytes(s)) = item.map_err(malformed)? {
            return Ok(json!(utf8(s)?));
        }
    }
    Ok(json!("0"))
}

fn int_or_string(data: &[u8]) -> Result<Value, ApiError> {
    let (mut is_string, mut int, mut string) = (false, 0i64, String::new());
    for item in fields(data) {
        match item.map_err(malformed)? {
            (1, wire::Value::Varint(t)) => is_string = t == 1,
            (2, wire::Value::Varint(i)) => int = i as i64,
            (3, wire::Value::Bytes(s)) => string = utf8(s)?,
            _ => return Err(bad("malformed IntOrString")),
        }
    }
    Ok(if is_string { json!(string) } else { json!(int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn empty_strings_in_repeated_fields_are_kept() {
        // PolicyRule{verbs: ["get"], apiGroups: [""], resources: ["pods"]}, as kubectl sends it.
        let mut data = vec![0x0a, 3];
        data.extend_from_slice(b"get");
        data.extend_from_slice(&[0x12, 0]);
        data.extend_from_slice(&[0x1a, 4]);
        data.extend_from_slice(b"pods");
        let rule = message(&schema::POLICY_RULE, &data).expect("decodes");
        assert_eq!(
            Value::Object(rule),
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})
        );
    }

    #[test]
    fn decodes_kubectl_create_namespace_and_configmap() {
        // Bodies captured from kubectl 1.32 (`create namespace foo`, `create configmap x --from-literal=a=b`).
        let ns = hex(
            "6b3873000a0f0a02763112094e616d657370616365121b0a130a03666f6f12001a0022002a0032003800420012001a020a001a002200",
        );
        assert_eq!(
            decode(&ns).expect("namespace"),
            json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"foo"}})
        );
        let cm = hex(
            "6b3873000a0f0a0276311209436f6e6669674d6170121b0a110a017812001a0022002a0032003800420012060a01611201621a002200",
        );
        assert_eq!(
            decode(&cm).expect("configmap"),
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":"b"}})
        );
    }

    #[test]
    fn decodes_kubectl_auth_can_i_and_refuses_what_it_cannot_decode() {
        // `kubectl auth can-i create pods`, captured from kubectl 1.32.
        let ssar = hex(
            "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374416363657373526576696577123f0a100a0012001a0022002a0032003800420012210a1f0a0764656661756c7412066372656174651a0022002a04706f647332003a001a08080012001a0020001a002200",
        );
        assert_eq!(
            decode(&ssar).expect("ssar")["spec"],
            json!({"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "pods"}})
        );
        // `kubectl create token default`.
        let token = hex(
            "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e52657175657374121d0a100a0012001a0022002a00320038004200120320901c1a040a0012001a002200",
        );
        assert_eq!(
            decode(&token).expect("token")["spec"],
            json!({"expirationSeconds": 3600})
        );
        // A kind without a table (Pod).
        let pod = hex("6b3873000a090a0276311203506f64");
        assert_eq!(
            decode(&pod).expect_err("no table").reason(),
            "UnsupportedMediaType"
        );
        // A ConfigMap carrying an unknown non-zero field 9.
        let mut cm = hex("6b3873000a0f0a0276311209436f6e6669674d61701204");
        cm.extend_from_slice(&[0x4a, 0x02, b'h', b'i']);
        let err = decode(&cm).expect_err("unknown field");
        assert!(err.to_string().contains("field 9 of ConfigMap"), "{err}");
        assert_eq!(decode(b"nope").expect_err("magic").reason(), "BadRequest");
    }
}
