//! Kubernetes mode: SVIDs signed by the cluster's `weft-agent ca` service. The agent keeps each
//! private key, sends a CSR with its service-account token, and trusts the CA only through the
//! root bundle mounted from the `weft-ca-root` ConfigMap.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};

use super::{
    ca::{CaError, CaSource, Issued, LocalCa},
    SpiffeId,
};

/// One signing request may take this long end to end.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where SVIDs come from: a CA key this process holds, or the cluster CA service.
#[derive(Debug)]
pub enum Signer {
    Local(Box<LocalCa>),
    Remote(RemoteCa),
}

impl From<LocalCa> for Signer {
    fn from(ca: LocalCa) -> Self {
        Self::Local(Box::new(ca))
    }
}

impl Signer {
    pub fn load(source: &CaSource, trust_domain: &str) -> Result<Self, CaError> {
        match source {
            CaSource::Remote {
                url,
                root,
                token_file,
            } => Ok(Self::Remote(RemoteCa::new(url, root, token_file)?)),
            _ => LocalCa::load(source, trust_domain).map(|ca| Self::Local(Box::new(ca))),
        }
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        match self {
            Self::Local(ca) => ca.roots(),
            Self::Remote(ca) => &ca.roots,
        }
    }

    /// The file whose change means the trust bundle changed.
    pub fn bundle_file(&self) -> &Path {
        match self {
            Self::Local(ca) => &ca.bundle_file,
            Self::Remote(ca) => &ca.root_file,
        }
    }

    pub fn issue(
        &self,
        id: &SpiffeId,
        key: &KeyPair,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        match self {
            Self::Local(ca) => ca.issue(id, key, lifetime),
            Self::Remote(ca) => ca.issue(id, key),
        }
    }
}

/// The cluster CA service, reached over TLS verified against the mounted root bundle.
#[derive(Debug)]
pub struct RemoteCa {
    url: String,
    host: String,
    port: u16,
    roots: Vec<CertificateDer<'static>>,
    root_file: PathBuf,
    token_file: PathBuf,
    tls: Arc<rustls::ClientConfig>,
}

fn remote_error(url: &str, reason: impl std::fmt::Display) -> CaError {
    CaError::Remote {
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

impl RemoteCa {
    #[expect(
        clippy::disallowed_methods,
        reason = "built at start-up on a blocking thread"
    )]
    pub fn new(url: &str, root_file: &Path, token_file: &Path) -> Result<Self, CaError> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| remote_error(url, "the CA URL must start with https://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse().map_err(|_| remote_error(url, "bad port"))?,
            ),
            None => (authority, 443),
        };
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
                .map_err(|e| remote_error(url, format!("root bundle: {e}")))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| remote_error(url, e))?
        .with_root_certificates(store)
        .with_no_client_auth();
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
            roots,
            root_file: root_file.to_owned(),
            token_file: token_file.to_owned(),
            tls: Arc::new(tls),
        })
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "signing is reached only through CertStore::get on blocking threads (get_async, renewal, enrollment)"
    )]
    fn issue(&self, id: &SpiffeId, key: &KeyPair) -> Result<Issued, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        let csr = params.serialize_request(key)?.pem()?;
        // The token is re-read each time: the kubelet rotates projected tokens.
        let token = std::fs::read_to_string(&self.token_file).map_err(|source| CaError::Io {
            path: self.token_file.clone(),
            source,
        })?;
        let body = serde_json::json!({ "csr": csr }).to_string();
        // Callers are on blocking threads (CertStore::get_async, renewal, enrollment).
        let answer = self.post(token.trim(), &body)?;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut answer.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let leaf = chain
            .first()
            .ok_or_else(|| remote_error(&self.url, "answer holds no certificate"))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| remote_error(&self.url, e))?;
        let validity = parsed.validity();
        let at = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(Issued {
            not_before: at(validity.not_before),
            not_after: at(validity.not_after),
            serial: parsed.raw_serial_as_string().replace(':', ""),
            chain,
        })
    }

    /// `POST /v1/svid` over HTTP/1.1 and TLS; returns the PEM chain of a 200 answer.
    #[expect(
        clippy::disallowed_methods,
        reason = "signing is reached only through CertStore::get on blocking threads (get_async, renewal, enrollment)"
    )]
    fn post(&self, token: &str, body: &str) -> Result<String, CaError> {
        let fail = |reason: String| remote_error(&self.url, reason);
        let addresses: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| fail(format!("resolving {}: {e}", self.host)))?
            .collect();
        let mut last = format!("{} has no address", self.host);
        let mut connected = None;
        for address in addresses {
            match TcpStream::connect_timeout(&address, TIMEOUT) {
                Ok(tcp) => {
                    connected = Some(tcp);
                    break;
                }
                Err(e) => last = format!("connecting to {address}: {e}"),
            }
        }
        let tcp = connected.ok_or_else(|| fail(last))?;
        tcp.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| fail(e.to_string()))?;
        tcp.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| fail(e.to_string()))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| fail(e.to_string()))?;
        let connection = rustls::ClientConnection::new(self.tls.clone(), name)
            .map_err(|e| fail(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        let request = format!(
            "POST /v1/svid HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            body.len()
        );
        tls.write_all(request.as_bytes())
            .map_err(|e| fail(format!("sending: {e}")))?;
        let mut answer = Vec::new();
        // A peer that closes without close_notify after a complete answer is tolerated.
        if let Err(e) = tls.read_to_end(&mut answer) {
            if answer.is_empty() {
                return Err(fail(format!("reading: {e}")));
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| fail("malformed HTTP answer".into()))?;
        let status = head.split_whitespace().nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        if status != "200" {
            let reason = json["error"].as_str().unwrap_or(body);
            return Err(fail(format!("HTTP {status}: {reason}")));
        }
        json["chain"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| fail("answer has no chain".into()))
    }
}
