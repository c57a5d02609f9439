//! The SVIDs this agent holds, one per identity of its node's workloads. Keys are made here and
//! never leave. An identity is issued once however many connections ask for it at the same
//! time (one issuance in flight per identity), off the connection path when its pod is enrolled
//! (the certificate worker), and renewed near half-life with jitter, so a node's SVIDs do not
//! all renew in the same second. Open connections keep the certificate they started with;
//! new handshakes pick up the new one.

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
    /// Between 45 % and 55 % of its lifetime, chosen at issue.
    renew_at: SystemTime,
}

/// When an SVID issued at `issued_at` and valid until `not_after` is renewed: at half-life,
/// give or take a random 5 % of its lifetime.
fn renew_time(issued_at: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(issued_at).unwrap_or_default();
    issued_at + lifetime.mul_f64(rand::random_range(0.45..0.55))
}

/// What `weftctl certs` shows: the admin contract's type.
pub type CertInfo = weft_api::Cert;

#[derive(Debug)]
pub struct CertStore {
    pub trust_domain: String,
    ca: RwLock<Signer>,
    lifetime: Duration,
    svids: RwLock<HashMap<SpiffeId, Arc<Svid>>>,
    /// One lock per identity being issued: whoever holds it issues, the others wait for it and
    /// find the SVID in `svids`.
    issuing: Mutex<HashMap<SpiffeId, Arc<tokio::sync::Mutex<()>>>>,
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
    pub fn new(ca: Signer, trust_domain: &str, lifetime: Duration) -> Self {
        let roots = ArcSwap::from_pointee(root_store(&ca));
        Self {
            trust_domain: trust_domain.into(),
            ca: RwLock::new(ca),
            lifetime,
            svids: RwLock::default(),
            issuing: Mutex::default(),
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
    /// The SVID for `id`, issued first when the agent holds none. However many callers ask at
    /// once, one issuance runs; the others wait for it.
    pub async fn get_async(&self, id: &SpiffeId) -> Result<Arc<Svid>, CaError> {
        if let Some(svid) = self.cached(id) {
            return Ok(svid);
        }
        self.issue_once(id, |held| held.is_none()).await
    }

    /// The SVID the agent holds for `id`, without issuing: TLS set-up, after
    /// [`CertStore::get_async`] made sure there is one.
    pub fn current(&self, id: &SpiffeId) -> Result<Arc<Svid>, CaError> {
        self.cached(id)
            .ok_or_else(|| CaError::NotIssued(id.to_string()))
    }

    fn cached(&self, id: &SpiffeId) -> Option<Arc<Svid>> {
        self.svids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Issues an SVID for `id` under its issuing lock, when `needed` (given what is held once
    /// the lock is taken) says so; returns what is held afterwards.
    async fn issue_once(
        &self,
        id: &SpiffeId,
        needed: impl Fn(Option<&Svid>) -> bool,
    ) -> Result<Arc<Svid>, CaError> {
        let lock = self
            .issuing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_default()
            .clone();
        let guard = lock.lock().await;
        let held = self.cached(id);
        let result = if needed(held.as_deref()) {
            match self.issue(id).await {
                Ok(svid) => {
                    let svid = Arc::new(svid);
                    self.svids
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id.clone(), svid.clone());
                    Ok(svid)
                }
                Err(e) => Err(e),
            }
        } else {
            held.ok_or_else(|| CaError::NotIssued(id.to_string()))
        };
        drop(guard);
        // The last one out removes the lock, so the map holds only identities being issued.
        let mut issuing = self.issuing.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::strong_count(&lock) == 2 {
            issuing.remove(id);
        }
        result
    }

    async fn issue(&self, id: &SpiffeId) -> Result<Svid, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let signer = self
            .ca
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let super::ca::Issued {
            chain,
            not_before,
            not_after,
            serial,
        } = signer.sign(id, &key, self.lifetime).await?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key_der)
            .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
        tracing::info!(identity = %id, %serial, "issued SVID");
        let issued_at = SystemTime::now();
        Ok(Svid {
            issued_at,
            renew_at: renew_time(issued_at, not_after),
            id: id.clone(),
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            not_before,
            not_after,
            serial,
        })
    }

    /// Renews every SVID past its renewal time. Returns how many were renewed.
    pub async fn renew_due(&self) -> usize {
        let now = SystemTime::now();
        let due: Vec<SpiffeId> = self
            .svids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| s.renew_at <= now)
            .map(|s| s.id.clone())
            .collect();
        let mut renewed = 0;
        for id in due {
            // Another caller may have renewed it meanwhile: renew only what is still due.
            match self
                .issue_once(&id, |held| held.is_none_or(|s| s.renew_at <= now))
                .await
            {
                Ok(_) => renewed += 1,
                Err(e) => {
                    tracing::error!(identity = %id, error = %e, "SVID renewal failed; the old one stays in use until it expires");
                }
            }
        }
        renewed
    }

    /// SVIDs the signer has issued since it was loaded (local CA or cluster CA requests).
    pub fn signed(&self) -> u64 {
        self.ca
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .signed()
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
        let ca = super::remote::load(source, &self.trust_domain)?;
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
