//! Renewing the node's certificates while the agent runs, so an agent that runs for longer than its
//! certificates' lifetime never has to restart to stay a node.
//!
//! A [`CertSlot`] holds the certificate and key in use and is what rustls asks at every handshake
//! (as the client certificate resolver of the node's `kube::Client`, and as the kubelet API's
//! server certificate resolver): replacing its contents changes the certificate of every *new*
//! connection; connections already open keep the one they were made with, as TLS does. The slot
//! always holds a certificate and key that belong together: a pair whose key does not match the
//! certificate is refused and the old pair kept.
//!
//! [`keep_renewed`] asks the server for a new pair once two thirds of the current certificate's
//! lifetime have passed (as the kubelet rotates at 70–90 %): for the one-year certificates the
//! server issues, that is about four months before expiry, well inside k3s's 90-day renewal window.
//! A failed request is retried after a tenth of the time left (between 1 s and 5 min). Sleeps are
//! capped at [`MAX_NAP`] and the wall clock read again after each, because a Raspberry Pi has no
//! real-time clock: its clock jumps when NTP first syncs, and a deadline computed before that
//! would be wrong.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};
use x509_parser::prelude::FromDer;

/// The longest single sleep between looks at the wall clock.
pub const MAX_NAP: Duration = Duration::from_secs(600);
/// Bounds of the retry delay after a failed renewal.
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why a certificate and key could not be put in a slot.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("the {what} certificate: {reason}")]
    Certificate { what: &'static str, reason: String },
    #[error("the {what} key: {reason}")]
    Key { what: &'static str, reason: String },
}

/// A certificate in use, with its validity.
struct Current {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The certificate and key in use for one purpose (`what`: "client", "serving").
pub struct CertSlot {
    what: &'static str,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Current>>,
}

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSlot")
            .field("what", &self.what)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl CertSlot {
    /// A slot holding `cert_pem` (leaf first) and `key_pem`.
    pub fn new(what: &'static str, cert_pem: &str, key_pem: &str) -> Result<Self, RenewError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let current = load(what, &provider, cert_pem, key_pem)?;
        Ok(Self {
            what,
            provider,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Puts a new pair in use; on error the old one stays.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), RenewError> {
        let next = Arc::new(load(self.what, &self.provider, cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The certificate chain and key rustls presents now.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current().key.clone()
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> SystemTime {
        self.current().not_after
    }

    /// When the certificate in use should be renewed: two thirds into its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let c = self.current();
        let lifetime = c
            .not_after
            .duration_since(c.not_before)
            .unwrap_or(Duration::ZERO);
        c.not_before + lifetime * 2 / 3
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn load(
    what: &'static str,
    provider: &CryptoProvider,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Current, RenewError> {
    let cert_err = |reason: String| RenewError::Certificate { what, reason };
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| cert_err("no PEM certificate".into()))?;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| cert_err(e.to_string()))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let not_before = at(parsed.validity().not_before.timestamp());
    let not_after = at(parsed.validity().not_after.timestamp());
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| RenewError::Key {
        what,
        reason: e.to_string(),
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| RenewError::Key {
        what,
        reason: e.to_string(),
    })?;
    Ok(Current {
        key: Arc::new(key),
        not_before,
        not_after,
    })
}

/// Stops a renewal task when dropped (the owner of the certificate's users holds it).
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long to wait after a failed renewal: a tenth of the time left, within 1 s .. 5 min.
fn retry_delay(not_after: SystemTime, now: SystemTime) -> Duration {
    let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    (left / 10).clamp(MIN_RETRY, MAX_RETRY)
}

/// Renews the pair in `slot` for as long as the returned future runs (abort it to stop): `fetch`
/// asks the server for a new certificate and key (PEM); `renewed` is told each new pair once it is
/// in use (to write it to disk).
pub async fn keep_renewed<F, Fut, W>(slot: Arc<CertSlot>, mut fetch: F, mut renewed: W)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(String, String), String>>,
    W: FnMut(&str, &str),
{
    loop {
        let now = SystemTime::now();
        let due = slot.renew_at();
        if let Ok(wait) = due.duration_since(now)
            && !wait.is_zero()
        {
            tokio::time::sleep(wait.min(MAX_NAP)).await;
            continue;
        }
        let result = fetch().await.and_then(|(cert, key)| {
            slot.replace(&cert, &key).map_err(|e| e.to_string())?;
            Ok((cert, key))
        });
        match result {
            Ok((cert, key)) => {
                info!(
                    what = slot.what,
                    not_after = %chrono::DateTime::<chrono::Utc>::from(slot.not_after()),
                    "renewed the node's {} certificate",
                    slot.what
                );
                renewed(&cert, &key);
            }
            Err(e) => {
                let retry = retry_delay(slot.not_after(), SystemTime::now());
                warn!(
                    what = slot.what,
                    "renewing the node's {} certificate: {e}; retrying in {}s",
                    slot.what,
                    retry.as_secs()
                );
                tokio::time::sleep(retry).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_is_a_tenth_of_what_is_left_within_bounds() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            retry_delay(now + Duration::from_secs(100), now),
            Duration::from_secs(10)
        );
        assert_eq!(retry_delay(now, now), MIN_RETRY);
        assert_eq!(retry_delay(now - Duration::from_secs(5), now), MIN_RETRY);
        assert_eq!(
            retry_delay(now + Duration::from_secs(365 * 86_400), now),
            MAX_RETRY
        );
    }

    #[test]
    fn garbage_is_refused_with_what_it_was() {
        let err = CertSlot::new("client", "not pem", "not pem").unwrap_err();
        assert!(err.to_string().contains("client certificate"), "{err}");
    }
}
