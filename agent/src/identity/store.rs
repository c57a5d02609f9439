//! The SVIDs this agent holds, one per identity of its node's workloads. Keys are made here and
//! never leave. Certificates are renewed at half-life; open connections keep the certificate
//! they started with, new handshakes pick up the new one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rcgen::KeyPair;
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
    RootCertStore,
};
use serde::Serialize;

use super::{remote::Signer, CaError, SpiffeId};

/// One identity's certificate and key, ready for rustls.
#[derive(Debug)]
pub struct Svid {
    pub id: SpiffeId,
    pub certified: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
    /// When it was issued (`not_before` is backdated for clock skew).
    pub issued_at: SystemTime,
}

impl Svid {
    fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + lifetime / 2
    }
}

/// What `weftctl certs` shows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    pub identity: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub seconds_to_expiry: i64,
}

#[derive(Debug)]
pub struct CertStore {
    pub trust_domain: String,
    ca: RwLock<Signer>,
    lifetime: Duration,
    svids: RwLock<HashMap<SpiffeId, Arc<Svid>>>,
    roots: ArcSwap<RootCertStore>,
    /// HBONE server configurations by identity, with the SVID serial and roots they were made
    /// from.
    server_configs: Mutex<HashMap<SpiffeId, CachedServerConfig>>,
}

type CachedServerConfig = (String, Arc<RootCertStore>, Arc<rustls::ServerConfig>);

fn root_store(ca: &Signer) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for root in ca.roots() {
        if let Err(e) = store.add(root.clone()) {
            tracing::warn!(error = %e, "ignoring an unusable trust anchor");
        }
    }
    store
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl CertStore {
    pub fn new(ca: impl Into<Signer>, trust_domain: &str, lifetime: Duration) -> Self {
        let ca = ca.into();
        let roots = ArcSwap::from_pointee(root_store(&ca));
        Self {
            trust_domain: trust_domain.into(),
            ca: RwLock::new(ca),
            lifetime,
            svids: RwLock::default(),
            roots,
            server_configs: Mutex::default(),
        }
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.load_full()
    }

    pub(super) fn cached_server_config(
        &self,
        id: &SpiffeId,
        serial: &str,
        roots: &Arc<RootCertStore>,
    ) -> Option<Arc<rustls::ServerConfig>> {
        let cache = self
            .server_configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (cached_serial, cached_roots, config) = cache.get(id)?;
        (cached_serial == serial && Arc::ptr_eq(cached_roots, roots)).then(|| config.clone())
    }

    pub(super) fn cache_server_config(
        &self,
        id: &SpiffeId,
        serial: &str,
        roots: Arc<RootCertStore>,
        config: Arc<rustls::ServerConfig>,
    ) {
        self.server_configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), (serial.to_owned(), roots, config));
    }

    /// The current SVID for `id`, issuing one if the agent holds none yet.
    /// The SVID for `id`, issued first when there is none: the issuing, which generates a key
    /// and may wait on the cluster CA, runs on a blocking thread, never on a runtime worker.
    pub async fn get_async(self: &Arc<Self>, id: &SpiffeId) -> Result<Arc<Svid>, CaError> {
        if let Some(svid) = self
            .svids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Ok(svid.clone());
        }
        let (store, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || store.get(&id))
            .await
            .map_err(|e| CaError::Remote {
                url: "the SVID issuing thread".into(),
                reason: e.to_string(),
            })?
    }

    /// The SVID for `id`, issued on the caller's thread when there is none: call it off the
    /// async runtime, or after [`CertStore::get_async`].
    pub fn get(&self, id: &SpiffeId) -> Result<Arc<Svid>, CaError> {
        if let Some(svid) = self
            .svids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Ok(svid.clone());
        }
        let svid = Arc::new(self.issue(id)?);
        self.svids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), svid.clone());
        Ok(svid)
    }

    fn issue(&self, id: &SpiffeId) -> Result<Svid, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let super::ca::Issued {
            chain,
            not_before,
            not_after,
            serial,
        } = self
            .ca
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .issue(id, &key, self.lifetime)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key_der)
            .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
        tracing::info!(identity = %id, %serial, "issued SVID");
        Ok(Svid {
            issued_at: SystemTime::now(),
            id: id.clone(),
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            not_before,
            not_after,
            serial,
        })
    }

    /// Renews every SVID past its half-life. Returns how many were renewed.
    pub fn renew_due(&self) -> usize {
        let now = SystemTime::now();
        let due: Vec<SpiffeId> = self
            .svids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| s.renew_at() <= now)
            .map(|s| s.id.clone())
            .collect();
        let mut renewed = 0;
        for id in due {
            match self.issue(&id) {
                Ok(svid) => {
                    self.svids
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id, Arc::new(svid));
                    renewed += 1;
                }
                Err(e) => {
                    tracing::error!(identity = %id, error = %e, "SVID renewal failed; the old one stays in use until it expires");
                }
            }
        }
        renewed
    }

    /// Forgets identities no workload on the node uses any more.
    pub fn retain(&self, keep: &[SpiffeId]) {
        self.svids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| keep.contains(id));
    }

    /// Reloads the CA and trust bundle (after their file changed).
    pub fn reload(&self, source: &super::CaSource) -> Result<(), CaError> {
        let ca = Signer::load(source, &self.trust_domain)?;
        self.roots.store(Arc::new(root_store(&ca)));
        *self.ca.write().unwrap_or_else(PoisonError::into_inner) = ca;
        // SVIDs from the old signer are reissued on next use; open connections keep theirs.
        self.svids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        tracing::info!("trust bundle reloaded");
        Ok(())
    }

    pub fn bundle_file(&self) -> std::path::PathBuf {
        self.ca
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .bundle_file()
            .to_owned()
    }

    pub fn certs(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        let mut out: Vec<CertInfo> = self
            .svids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|s| CertInfo {
                identity: s.id.to_string(),
                serial: s.serial.clone(),
                not_before: rfc3339(s.not_before),
                not_after: rfc3339(s.not_after),
                seconds_to_expiry: match s.not_after.duration_since(now) {
                    Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
                },
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    /// The DER roots, for tests and tools.
    pub fn root_ders(&self) -> Vec<CertificateDer<'static>> {
        self.ca
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .roots()
            .to_vec()
    }
}
