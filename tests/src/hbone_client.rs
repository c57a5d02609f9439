//! An HBONE client of the tests' own: mutual TLS with an SVID from the harness cluster's
//! local CA, run inside a netns, for what no well-behaved agent would send.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use weft_mesh::identity::{self, CaSource, CertStore, LocalCa, SpiffeId};

use crate::netns;

/// What the client does with its TLS configuration and the server's address.
pub type Body<T> = Box<
    dyn FnOnce(
            Arc<rustls::ClientConfig>,
            SocketAddr,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + Send>>
        + Send
        + 'static,
>;

/// A TLS connection to an HBONE listener with `config`, the server named by its address.
pub async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    server: SocketAddr,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(server).await?;
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::IpAddress(server.ip().into()),
            tcp,
        )
        .await?)
}

/// Runs `body` in `netns` with a client configuration presenting `own` and expecting the
/// server to prove `expected`, signed by the CA in `ca_dir`.
pub fn run<T: Send + 'static>(
    ca_dir: &Path,
    netns: &str,
    own: &SpiffeId,
    expected: &SpiffeId,
    server: SocketAddr,
    body: Body<T>,
) -> anyhow::Result<T> {
    let ca = LocalCa::load(
        &CaSource::Generated {
            dir: ca_dir.to_owned(),
        },
        "cluster.local",
    )?;
    let store = CertStore::new(Arc::new(ca), "cluster.local", Duration::from_hours(1));
    let (own, expected) = (own.clone(), expected.clone());
    netns::block_on(netns, move || async move {
        store.get_async(&own).await?;
        let config = identity::client_config(&store, &own, &expected)?;
        body(config, server).await
    })
}
