//! TLS for HBONE: TLS 1.3 only, ALPN `h2`, both sides present SVIDs. The server accepts a
//! client whose chain leads to our roots and whose SPIFFE ID is in our trust domain; the client
//! accepts a server whose chain leads to our roots and whose SPIFFE ID is exactly the one the
//! registry expects for the destination (secure naming).

use std::sync::Arc;

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ParsedCertificate, WebPkiClientVerifier,
    },
    sign::CertifiedKey,
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};

use super::{CaError, CertStore, SpiffeId};

pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no SVID for {id}: {source}")]
    Svid {
        id: SpiffeId,
        #[source]
        source: CaError,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The HBONE provider: ring, with TLS 1.3's AES-128-GCM offered first. Both agents of a tunnel
/// encrypt every byte, and AES-128 runs 10 rounds to AES-256's 14: on the bench's single
/// stream it is the largest CPU line after the copies (`aes_gcm` in `--profile throughput`).
/// AES-256-GCM and ChaCha20 stay allowed, so a peer that prefers them (ztunnel) still agrees.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The SPIFFE ID in a certificate: its only URI SAN.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    SpiffeId::parse(uri)
}

/// A certificate's serial number in lowercase hex, as `weftctl certs` shows it.
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(
        parsed
            .raw_serial()
            .iter()
            .fold(String::new(), |mut hex, b| {
                let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
                hex
            }),
    )
}

fn bad_identity(what: &str) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(what.to_owned()),
    ))))
}

#[derive(Debug)]
struct Presenting(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Presenting {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Presenting {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server side: chain to our roots (client-auth usage), then the trust domain.
#[derive(Debug)]
struct TrustDomainClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        match peer_identity(end_entity) {
            Some(id) if id.trust_domain == self.trust_domain => Ok(ClientCertVerified::assertion()),
            Some(id) => Err(bad_identity(&format!(
                "client {id} is not in trust domain {}",
                self.trust_domain
            ))),
            None => Err(bad_identity("client certificate carries no SPIFFE ID")),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Client side: chain to our roots, then exactly the expected identity.
#[derive(Debug)]
struct SecureNamingVerifier {
    roots: Arc<rustls::RootCertStore>,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SecureNamingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match peer_identity(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(bad_identity(&format!(
                "server is {id}, expected {}",
                self.expected
            ))),
            None => Err(bad_identity("server certificate carries no SPIFFE ID")),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The HBONE server configuration for a workload of this node, built once per SVID and trust
/// bundle and reused by every handshake until either changes.
pub fn server_config(store: &CertStore, own: &SpiffeId) -> Result<Arc<ServerConfig>, TlsError> {
    let svid = store.current(own).map_err(|source| TlsError::Svid {
        id: own.clone(),
        source,
    })?;
    let roots = store.roots();
    if let Some(config) = store.cached_server_config(own, &svid.serial, &roots) {
        return Ok(config);
    }
    let config = build_server_config(store, &svid, roots.clone())?;
    store.cache_server_config(own, &svid.serial, roots, config.clone());
    Ok(config)
}

fn build_server_config(
    store: &CertStore,
    svid: &super::Svid,
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = TrustDomainClientVerifier {
        chain,
        trust_domain: store.trust_domain.clone(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(Presenting(svid.certified.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The HBONE client configuration from `own` to a server that must be `expected`.
pub fn client_config(
    store: &CertStore,
    own: &SpiffeId,
    expected: &SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let svid = store.current(own).map_err(|source| TlsError::Svid {
        id: own.clone(),
        source,
    })?;
    let provider = provider();
    let verifier = SecureNamingVerifier {
        roots: store.roots(),
        expected: expected.clone(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Presenting(svid.certified.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}
