//! The local-mode certificate authority: a root generated on first start and kept in a folder
//! (shared by the agents of a local cluster), or a CA the user supplies as files (a root, or an
//! intermediate with its chain). It signs SVIDs for keys the agent made.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use super::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate request names no SPIFFE ID (a URI SAN spiffe://<trust domain>/ns/<ns>/sa/<sa>)")]
    CsrIdentity,
    #[error("the CA at {url} refused or failed: {reason}")]
    Remote { url: String, reason: String },
    #[error("no SVID for {0} yet: it is issued when its pod is enrolled or on first use")]
    NotIssued(String),
}

/// Where the CA comes from.
#[derive(Clone, Debug)]
pub enum CaSource {
    /// `<dir>/ca.pem` (certificate and key), generated on first start if missing.
    Generated { dir: PathBuf },
    /// User-supplied: the signing certificate and key, and optionally its chain up to the root.
    Files {
        cert: PathBuf,
        key: PathBuf,
        chain: Option<PathBuf>,
    },
    /// Kubernetes mode: the cluster's CA service, trusted through `root`, authenticated with
    /// the service-account token in `token_file`.
    Remote {
        url: String,
        root: PathBuf,
        token_file: PathBuf,
    },
}

/// A signed SVID certificate: the chain to present, its validity and serial (hex).
#[derive(Debug)]
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
}

/// A CA that can sign SVIDs.
#[derive(Debug)]
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    /// Certificates sent after the leaf: the signing CA (if not the root) and its chain.
    chain: Vec<CertificateDer<'static>>,
    /// Trust anchors: the self-signed root(s).
    roots: Vec<CertificateDer<'static>>,
    /// The file whose change means the trust bundle changed.
    pub bundle_file: PathBuf,
    /// SVIDs signed so far, for `/stats` (one issuance per identity and renewal).
    signed: std::sync::atomic::AtomicU64,
}

#[expect(
    clippy::disallowed_methods,
    reason = "CA files are read at start-up and on reload, both on blocking threads"
)]
fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path, text: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(CaError::Pem {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key in a PEM text that may also hold certificates.
fn key_pem(path: &Path, text: &str) -> Result<KeyPair, CaError> {
    let missing = || CaError::Pem {
        path: path.to_owned(),
        what: "private key",
    };
    let start = text
        .find("-----BEGIN PRIVATE KEY-----")
        .ok_or_else(missing)?;
    let end_marker = "-----END PRIVATE KEY-----";
    let end = text[start..].find(end_marker).ok_or_else(missing)? + start + end_marker.len();
    KeyPair::from_pem(&text[start..end]).map_err(|_| missing())
}

fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert).is_ok_and(|(_, c)| c.subject() == c.issuer())
}

impl LocalCa {
    pub fn load(source: &CaSource, trust_domain: &str) -> Result<Self, CaError> {
        match source {
            CaSource::Generated { dir } => Self::load_or_generate(dir, trust_domain),
            CaSource::Files { cert, key, chain } => {
                let cert_pem = read(cert)?;
                let signing = certs(cert, &cert_pem)?.remove(0);
                let key = key_pem(key, &read(key)?)?;
                let chain_certs = match chain {
                    Some(path) => certs(path, &read(path)?)?,
                    None => Vec::new(),
                };
                Self::from_parts(signing, key, chain_certs, cert.clone())
            }
            CaSource::Remote { url, .. } => Err(CaError::Remote {
                url: url.clone(),
                reason: "a remote CA holds no key here".into(),
            }),
        }
    }

    fn from_parts(
        signing: CertificateDer<'static>,
        key: KeyPair,
        chain: Vec<CertificateDer<'static>>,
        bundle_file: PathBuf,
    ) -> Result<Self, CaError> {
        let issuer = Issuer::from_ca_cert_der(&signing, key)?;
        let mut sent = Vec::new();
        let mut roots = Vec::new();
        for cert in std::iter::once(signing).chain(chain) {
            if is_self_signed(&cert) {
                roots.push(cert);
            } else {
                sent.push(cert);
            }
        }
        Ok(Self {
            issuer,
            chain: sent,
            roots,
            bundle_file,
            signed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Loads `<dir>/ca.pem`, or generates a root there. Several agents may race on a fresh
    /// folder: the file appears atomically and whoever loses uses the winner's.
    #[expect(
        clippy::disallowed_methods,
        reason = "CA files are read at start-up and on reload, both on blocking threads"
    )]
    fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let path = dir.join("ca.pem");
        if !path.exists() {
            fs::create_dir_all(dir).map_err(|source| CaError::Io {
                path: dir.to_owned(),
                source,
            })?;
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let mut name = DistinguishedName::new();
            name.push(DnType::OrganizationName, "Weft");
            // A unique name per root, so a peer from another root fails as "unknown issuer".
            let unique: u32 = rand::random();
            name.push(
                DnType::CommonName,
                format!("Weft root CA {unique:08x} for {trust_domain}"),
            );
            params.distinguished_name = name;
            params.not_before = (SystemTime::now() - Duration::from_hours(1)).into();
            params.not_after = (SystemTime::now() + Duration::from_hours(87600)).into();
            let cert = params.self_signed(&key)?;
            let tmp = dir.join(format!(".ca.pem.{}", std::process::id()));
            write_private(&tmp, &format!("{}{}", cert.pem(), key.serialize_pem()))?;
            // hard_link fails if another agent created ca.pem first; then we use theirs.
            let _ = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
        }
        let text = read(&path)?;
        let cert = certs(&path, &text)?.remove(0);
        Self::from_parts(cert, key_pem(&path, &text)?, Vec::new(), path)
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Signs an SVID for `id` over `key`, valid for `lifetime` (from a minute ago, for clock
    /// skew). Returns the chain to present: leaf, then intermediates.
    pub fn issue(
        &self,
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let now = SystemTime::now();
        self.signed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.issue_valid_between(id, key, now - Duration::from_mins(1), now + lifetime)
    }

    /// SVIDs this CA has signed since it was loaded.
    pub fn signed(&self) -> u64 {
        self.signed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Signs an SVID valid between two instants (tests use it for expired certificates).
    pub fn issue_valid_between(
        &self,
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial: [u8; 16] = rand_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let serial_hex = serial.iter().fold(String::with_capacity(32), |mut hex, b| {
            let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
            hex
        });
        Ok(Issued {
            chain,
            not_before,
            not_after,
            serial: serial_hex,
        })
    }
}

impl LocalCa {
    /// Signs an SVID for `id` over the public key of a PEM certificate signing request. The
    /// caller has authorized `id`; nothing else of the request is copied into the certificate.
    pub fn issue_for_csr(
        &self,
        id: &SpiffeId,
        csr_pem: &str,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.issue(id, &csr.public_key, lifetime)
    }

    /// The CA service's own TLS certificate for `dns_names`, over `key`.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        key: &KeyPair,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_mins(1)).into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(SerialNumber::from_slice(&rand_serial()));
        let cert = params.signed_by(key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }

    /// The SPIFFE ID a PEM CSR asks for (its one URI SAN).
    pub fn csr_identity(csr_pem: &str) -> Result<SpiffeId, CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params
            .subject_alt_names
            .iter()
            .find_map(|san| match san {
                SanType::URI(uri) => SpiffeId::parse(uri.as_str()),
                _ => None,
            })
            .ok_or(CaError::CsrIdentity)
    }
}

fn rand_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    // Positive and non-zero as DER integers want.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    serial
}

#[expect(
    clippy::disallowed_methods,
    reason = "CA files are written at start-up, on a blocking thread"
)]
fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| CaError::Io {
            path: path.to_owned(),
            source,
        })?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}
