//! ServiceAccount tokens: ES256 JWTs signed with the server's service-account key
//! (`<data-dir>/server/tls/service.key`), issued through `serviceaccounts/<name>/token`
//! (TokenRequest, `kubectl create token`) and accepted as `Authorization: Bearer` credentials.
//!
//! A token authenticates only while it is unexpired, names one of the API's audiences, and its
//! ServiceAccount still exists with the same uid (so deleting the ServiceAccount revokes its tokens).
//! A token bound to a pod (TokenRequest `boundObjectRef`, what kubelets ask for projected volumes)
//! carries the pod's name and uid, and the node's, in its `kubernetes.io` claim, as upstream's;
//! `auth::token_user` refuses it once that pod is gone (see [`Bound`]).
//! The signature is the JWS form (r‖s, 64 bytes); rcgen signs in ASN.1 DER and the verifier
//! (webpki's ECDSA P-256/SHA-256 from rustls' provider) wants DER, so both ways are converted here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{KeyPair, PublicKeyData, SigningKey};
use rustls::pki_types::SignatureVerificationAlgorithm;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The issuer and default audience, as k3s uses them.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Audiences that authenticate to this API.
pub const API_AUDIENCES: &[&str] = &[ISSUER, "r3s"];

/// Signs and verifies ServiceAccount tokens.
pub struct TokenIssuer {
    key: KeyPair,
    public: Vec<u8>,
    kid: String,
    verifier: &'static dyn SignatureVerificationAlgorithm,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .finish()
    }
}

/// The identity a valid token carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSubject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A name and uid in a token's claims (the bound pod, its node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// What a token is bound to besides its ServiceAccount, and upstream's `warnafter` (the time
/// after which an extended projected token counts as stale).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    pub pod: Option<ObjectRef>,
    pub node: Option<ObjectRef>,
    pub warn_after: Option<i64>,
}

/// Everything a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub subject: TokenSubject,
    pub bound: Bound,
    /// The `jti` claim (upstream's credential id is `JTI=<jti>`).
    pub jti: Option<String>,
}

/// What a projected `serviceAccountToken` source asks for by default (upstream's
/// `WarnOnlyBoundTokenExpirationSeconds`): a pod-bound request for exactly this many seconds for
/// the API's audiences gets a token valid for [`EXTENDED_SECONDS`] that warns after this, so
/// clients that never reload their token keep working.
pub const WARN_ONLY_SECONDS: i64 = 3607;
/// A year: the lifetime of such an extended token (upstream's `ExpirationExtensionSeconds`).
pub const EXTENDED_SECONDS: i64 = 365 * 24 * 3600;

impl TokenIssuer {
    /// From the PEM of an ECDSA P-256 private key (what `tls::ensure_certificates` writes).
    pub fn from_pem(pem: &str) -> Result<TokenIssuer, String> {
        let key = KeyPair::from_pem(pem).map_err(|e| format!("service-account key: {e}"))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("service-account key: expected an ECDSA P-256 key".into());
        }
        let public = key.public_key_raw().to_vec();
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(key.subject_public_key_info())[..16]);
        let verifier = rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all
            .iter()
            .copied()
            .find(|alg| {
                alg.public_key_alg_id() == rustls::pki_types::alg_id::ECDSA_P256
                    && alg.signature_alg_id() == rustls::pki_types::alg_id::ECDSA_SHA256
            })
            .ok_or("the TLS provider has no ECDSA P-256/SHA-256 verifier")?;
        Ok(TokenIssuer {
            key,
            public,
            kid,
            verifier,
        })
    }

    /// A token for a ServiceAccount valid for `seconds` from now.
    pub fn issue(
        &self,
        subject: &TokenSubject,
        audiences: &[String],
        seconds: i64,
    ) -> Result<(String, i64), ApiError> {
        self.issue_bound(subject, &Bound::default(), audiences, seconds)
    }

    /// A token for a ServiceAccount valid for `seconds` from now, bound to what `bound` names.
    pub fn issue_bound(
        &self,
        subject: &TokenSubject,
        bound: &Bound,
        audiences: &[String],
        seconds: i64,
    ) -> Result<(String, i64), ApiError> {
        let now = chrono::Utc::now().timestamp();
        let exp = now + seconds;
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let mut k8s = json!({"namespace": subject.namespace,
                             "serviceaccount": {"name": subject.name, "uid": subject.uid}});
        if let Some(pod) = &bound.pod {
            k8s["pod"] = json!({"name": pod.name, "uid": pod.uid});
        }
        if let Some(node) = &bound.node {
            k8s["node"] = json!({"name": node.name, "uid": node.uid});
        }
        if let Some(warn) = bound.warn_after {
            k8s["warnafter"] = json!(warn);
        }
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{}:{}", subject.namespace, subject.name),
            "aud": audiences, "iat": now, "nbf": now, "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": k8s,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let der = self
            .key
            .sign(signing_input.as_bytes())
            .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))?;
        let raw = der_to_raw(&der)
            .ok_or_else(|| ApiError::Internal("unexpected ECDSA signature encoding".into()))?;
        Ok((
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(raw)),
            exp,
        ))
    }

    /// The ServiceAccount a token names, if the signature, time window and audience (one of
    /// the API's) are valid.
    pub fn verify(&self, token: &str) -> Option<TokenSubject> {
        self.verify_for(token, API_AUDIENCES)
    }

    /// As [`TokenIssuer::verify`], for a token that must name one of `audiences`.
    pub fn verify_for(&self, token: &str, audiences: &[&str]) -> Option<TokenSubject> {
        self.verify_claims(token, audiences).map(|v| v.subject)
    }

    /// As [`TokenIssuer::verify_for`], with what the token is bound to. Whether the bound pod
    /// still exists is for the caller to check (it needs the store).
    pub fn verify_claims(&self, token: &str, audiences: &[&str]) -> Option<Verified> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header["alg"] != json!("ES256") {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let der = raw_to_der(&raw)?;
        let signed = &token[..header_len(token)?];
        self.verifier
            .verify_signature(&self.public, signed.as_bytes(), &der)
            .ok()?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let now = chrono::Utc::now().timestamp();
        let in_window = claims["exp"].as_i64().is_some_and(|exp| now < exp)
            && claims["nbf"].as_i64().is_none_or(|nbf| nbf <= now + 60);
        let audience_ok = match &claims["aud"] {
            Value::String(a) => audiences.contains(&a.as_str()),
            Value::Array(list) => list
                .iter()
                .any(|a| a.as_str().is_some_and(|a| audiences.contains(&a))),
            _ => false,
        };
        if !(in_window && audience_ok && claims["iss"] == json!(ISSUER)) {
            return None;
        }
        let k8s = &claims["kubernetes.io"];
        let object = |v: &Value| {
            Some(ObjectRef {
                name: v["name"].as_str()?.to_string(),
                uid: v["uid"].as_str().unwrap_or("").to_string(),
            })
        };
        Some(Verified {
            subject: TokenSubject {
                namespace: k8s["namespace"].as_str()?.to_string(),
                name: k8s["serviceaccount"]["name"].as_str()?.to_string(),
                uid: k8s["serviceaccount"]["uid"].as_str()?.to_string(),
            },
            bound: Bound {
                pod: object(&k8s["pod"]),
                node: object(&k8s["node"]),
                warn_after: k8s["warnafter"].as_i64(),
            },
            jti: claims["jti"].as_str().map(str::to_string),
        })
    }
}

/// Length of `header.claims` (the signed part) in a compact JWS.
fn header_len(token: &str) -> Option<usize> {
    token.rfind('.')
}

/// ASN.1 `SEQUENCE { INTEGER r, INTEGER s }` → 64-byte r‖s.
fn der_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    let body = der.strip_prefix(&[0x30])?;
    let (len, mut rest) = (*body.first()? as usize, body.get(1..)?);
    if len != rest.len() {
        return None;
    }
    let mut out = [0u8; 64];
    for half in 0..2 {
        let (&tag, after) = rest.split_first()?;
        let (&n, after) = after.split_first()?;
        if tag != 0x02 || after.len() < n as usize {
            return None;
        }
        let (int, next) = after.split_at(n as usize);
        let int = int.strip_prefix(&[0]).unwrap_or(int);
        if int.len() > 32 {
            return None;
        }
        out[half * 32 + 32 - int.len()..half * 32 + 32].copy_from_slice(int);
        rest = next;
    }
    Some(out)
}

/// 64-byte r‖s → ASN.1 DER.
fn raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let int = |bytes: &[u8]| {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut v = if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
            vec![0]
        } else {
            vec![]
        };
        v.extend(trimmed);
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let (r, s) = (int(&raw[..32]), int(&raw[32..]));
    let mut der = vec![0x30, (r.len() + s.len()) as u8];
    der.extend(r);
    der.extend(s);
    Some(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> TokenIssuer {
        let key = KeyPair::generate().expect("key");
        TokenIssuer::from_pem(&key.serialize_pem()).expect("issuer")
    }

    #[test]
    fn issued_tokens_verify_and_tampering_fails() {
        let issuer = issuer();
        let subject = TokenSubject {
            namespace: "apps".into(),
            name: "robot".into(),
            uid: "u-1".into(),
        };
        let (token, _) = issuer
            .issue(&subject, &[ISSUER.to_string()], 3600)
            .expect("issue");
        assert_eq!(issuer.verify(&token), Some(subject.clone()));

        let mut tampered = token.clone();
        tampered.insert(token.find('.').expect("dot") + 3, 'x');
        assert_eq!(issuer.verify(&tampered), None);
        assert_eq!(issuer.verify("a.b"), None);
        let (other_aud, _) = issuer
            .issue(&subject, &["vault".to_string()], 3600)
            .expect("issue");
        assert_eq!(issuer.verify(&other_aud), None, "not an API audience");
        let (expired, _) = issuer
            .issue(&subject, &[ISSUER.to_string()], -10)
            .expect("issue");
        assert_eq!(issuer.verify(&expired), None);
        assert_eq!(self::issuer().verify(&token), None, "another key");
    }

    #[test]
    fn bound_tokens_carry_the_pod_and_node() {
        let issuer = issuer();
        let subject = TokenSubject {
            namespace: "apps".into(),
            name: "robot".into(),
            uid: "u-1".into(),
        };
        let bound = Bound {
            pod: Some(ObjectRef {
                name: "web-0".into(),
                uid: "p-1".into(),
            }),
            node: Some(ObjectRef {
                name: "pi4".into(),
                uid: "n-1".into(),
            }),
            warn_after: Some(12345),
        };
        let (token, _) = issuer
            .issue_bound(&subject, &bound, &[ISSUER.to_string()], 3600)
            .expect("issue");
        let verified = issuer.verify_claims(&token, API_AUDIENCES).expect("valid");
        assert_eq!(verified.subject, subject);
        assert_eq!(verified.bound, bound);
        assert!(verified.jti.is_some_and(|j| !j.is_empty()));
        let (plain, _) = issuer
            .issue(&subject, &[ISSUER.to_string()], 3600)
            .expect("issue");
        assert_eq!(
            issuer.verify_claims(&plain, API_AUDIENCES).map(|v| v.bound),
            Some(Bound::default())
        );
    }

    #[test]
    fn signature_encodings_round_trip() {
        let raw: Vec<u8> = (0..64)
            .map(|i| if i == 0 || i == 32 { 0x80 } else { i as u8 })
            .collect();
        let der = raw_to_der(&raw).expect("der");
        assert_eq!(der_to_raw(&der).map(|r| r.to_vec()), Some(raw));
    }
}
