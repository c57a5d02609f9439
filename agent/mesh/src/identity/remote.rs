//! Where SVIDs are signed, behind one trait: the CA key this process holds ([`LocalCa`]), or
//! the cluster's `weft-agent ca` service ([`RemoteCa`]), reached with hyper over rustls. The
//! agent keeps each private key, sends a CSR with its service-account token, and trusts the CA
//! service only through the root bundle mounted from the `weft-ca-root` ConfigMap.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};

use super::{
    ca::{CaError, CaSource, Issued, LocalCa},
    SpiffeId,
};

/// One signing request may take this long end to end.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The CA's answer (a PEM chain in JSON) is read up to this size.
const MAX_ANSWER: usize = 64 * 1024;

/// A signing in progress.
pub type Signing<'a> = Pin<Box<dyn Future<Output = Result<Issued, CaError>> + Send + 'a>>;

/// Signs SVIDs for identities of this node's workloads.
pub trait CaClient: Send + Sync + std::fmt::Debug {
    /// A certificate for `id` over `key`'s public key, valid for about `lifetime` (a remote CA
    /// chooses its own).
    fn sign<'a>(&'a self, id: &'a SpiffeId, key: &'a KeyPair, lifetime: Duration) -> Signing<'a>;
    /// The trust anchors peers are checked against.
    fn roots(&self) -> &[CertificateDer<'static>];
    /// The file whose change means the trust bundle changed.
    fn bundle_file(&self) -> &Path;
    /// Certificates signed through this client so far.
    fn signed(&self) -> u64;
}

/// The signer the agent uses, local or remote.
pub type Signer = Arc<dyn CaClient>;

/// Loads the signer `source` names (reads files: call it off the async runtime).
pub fn load(source: &CaSource, trust_domain: &str) -> Result<Signer, CaError> {
    match source {
        CaSource::Remote {
            url,
            root,
            token_file,
        } => Ok(Arc::new(RemoteCa::new(url, root, token_file)?)),
        _ => Ok(Arc::new(LocalCa::load(source, trust_domain)?)),
    }
}

impl CaClient for LocalCa {
    fn sign<'a>(&'a self, id: &'a SpiffeId, key: &'a KeyPair, lifetime: Duration) -> Signing<'a> {
        // Signing with a key in memory takes microseconds: no thread hop is worth it.
        Box::pin(std::future::ready(self.issue(id, key, lifetime)))
    }

    fn roots(&self) -> &[CertificateDer<'static>] {
        LocalCa::roots(self)
    }

    fn bundle_file(&self) -> &Path {
        &self.bundle_file
    }

    fn signed(&self) -> u64 {
        LocalCa::signed(self)
    }
}

/// The cluster CA service, reached over TLS verified against the mounted root bundle.
#[derive(Debug)]
pub struct RemoteCa {
    /// `https://host:port/v1/svid`, parsed once.
    uri: http::Uri,
    host: String,
    port: u16,
    roots: Vec<CertificateDer<'static>>,
    root_file: PathBuf,
    token_file: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    signed: AtomicU64,
}

fn remote_error(url: &impl std::fmt::Display, reason: impl std::fmt::Display) -> CaError {
    CaError::Remote {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

impl RemoteCa {
    #[expect(
        clippy::disallowed_methods,
        reason = "built at start-up on a blocking thread"
    )]
    pub fn new(url: &str, root_file: &Path, token_file: &Path) -> Result<Self, CaError> {
        let base: http::Uri = url
            .parse()
            .map_err(|e| remote_error(&url, format!("not a URL: {e}")))?;
        if base.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(remote_error(&url, "the CA URL must start with https://"));
        }
        let host = base
            .host()
            .ok_or_else(|| remote_error(&url, "the CA URL names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = base.port_u16().unwrap_or(443);
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(base.authority().map_or(host.as_str(), |a| a.as_str()))
            .path_and_query("/v1/svid")
            .build()
            .map_err(|e| remote_error(&url, e))?;
        let text = std::fs::read_to_string(root_file).map_err(|source| CaError::Io {
            path: root_file.to_owned(),
            source,
        })?;
        let roots: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut text.as_bytes())
            .filter_map(Result::ok)
            .collect();
        if roots.is_empty() {
            return Err(CaError::Pem {
                path: root_file.to_owned(),
                what: "root certificate",
            });
        }
        let mut store = rustls::RootCertStore::empty();
        for root in &roots {
            store
                .add(root.clone())
                .map_err(|e| remote_error(&url, format!("root bundle: {e}")))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| remote_error(&url, e))?
        .with_root_certificates(store)
        .with_no_client_auth();
        Ok(Self {
            uri,
            host,
            port,
            roots,
            root_file: root_file.to_owned(),
            token_file: token_file.to_owned(),
            tls: Arc::new(tls),
            signed: AtomicU64::new(0),
        })
    }

    async fn issue(&self, id: &SpiffeId, key: &KeyPair) -> Result<Issued, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        let csr = params.serialize_request(key)?.pem()?;
        // The token is re-read each time: the kubelet rotates projected tokens.
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|source| CaError::Io {
                path: self.token_file.clone(),
                source,
            })?;
        let body = serde_json::json!({ "csr": csr }).to_string();
        let answer = tokio::time::timeout(TIMEOUT, self.post(token.trim(), body))
            .await
            .map_err(|_| remote_error(&self.uri, format!("no answer within {TIMEOUT:?}")))??;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut answer.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let leaf = chain
            .first()
            .ok_or_else(|| remote_error(&self.uri, "answer holds no certificate"))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| remote_error(&self.uri, e))?;
        let validity = parsed.validity();
        let at = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        self.signed.fetch_add(1, Ordering::Relaxed);
        Ok(Issued {
            not_before: at(validity.not_before),
            not_after: at(validity.not_after),
            serial: parsed.raw_serial_as_string().replace(':', ""),
            chain,
        })
    }

    /// `POST /v1/svid` with hyper over TLS; returns the PEM chain of a 200 answer.
    async fn post(&self, token: &str, body: String) -> Result<String, CaError> {
        let fail = |reason: String| remote_error(&self.uri, reason);
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail(format!("connecting to {}:{}: {e}", self.host, self.port)))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| fail(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let (mut send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| fail(format!("HTTP: {e}")))?;
        let host = self.uri.authority().map_or("", |a| a.as_str()).to_owned();
        let request = http::Request::post(self.uri.path())
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let response = send
                .send_request(request)
                .await
                .map_err(|e| fail(format!("sending: {e}")))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, CaError>((status, bytes))
        };
        // The connection is driven on its own task; a connection that fails fails the
        // exchange too, which then says why. The task ends with the exchange either way.
        let driver = tokio::spawn(connection);
        let exchanged = exchange.await;
        driver.abort();
        let (status, bytes) = exchanged?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if status != http::StatusCode::OK {
            let reason = json["error"].as_str().map_or_else(
                || String::from_utf8_lossy(&bytes).into_owned(),
                str::to_owned,
            );
            return Err(fail(format!("HTTP {}: {reason}", status.as_u16())));
        }
        json["chain"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| fail("answer has no chain".into()))
    }
}

impl CaClient for RemoteCa {
    fn sign<'a>(&'a self, id: &'a SpiffeId, key: &'a KeyPair, _lifetime: Duration) -> Signing<'a> {
        Box::pin(self.issue(id, key))
    }

    fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    fn bundle_file(&self) -> &Path {
        &self.root_file
    }

    fn signed(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }
}
