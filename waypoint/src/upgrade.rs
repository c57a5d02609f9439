//! HTTP/1.1 `Upgrade` (WebSocket and the like) through the waypoint: the request is routed and
//! filtered like any other; when the backend answers `101 Switching Protocols`, the client's
//! connection and the backend's are joined and bytes pass both ways, unchanged, until either
//! side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Upgraded connections open at once; past it an upgrade is answered without switching.
pub const MAX_UPGRADED: usize = 4_096;

/// Takes the client's pending upgrade from a request that asks for one (`Connection: upgrade`
/// and an `Upgrade` header, HTTP/1.1).
pub fn take(parts: &mut http::request::Parts) -> Option<OnUpgrade> {
    let asks = parts.version == http::Version::HTTP_11
        && parts.headers.contains_key(http::header::UPGRADE)
        && parts
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    }
}

/// Joins the client's upgraded connection to the backend's once both have switched, if the
/// backend agreed (`101`). Returns whether it did.
pub fn join(
    client: OnUpgrade,
    response: &mut http::Response<hyper::body::Incoming>,
    open: &std::sync::Arc<tokio::sync::Semaphore>,
    limits: &weft_mesh::limits::Limits,
    service: &str,
) -> bool {
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return false;
    }
    let Ok(permit) = open.clone().try_acquire_owned() else {
        limits.hit(
            "waypoint",
            "upgraded_connections",
            &format_args!("{MAX_UPGRADED} upgraded connections open; one more refused"),
        );
        return false;
    };
    let backend = hyper::upgrade::on(response);
    let service = service.to_owned();
    tokio::spawn(async move {
        let (client, backend) = tokio::join!(client, backend);
        match (client, backend) {
            (Ok(client), Ok(backend)) => {
                let moved = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(backend),
                )
                .await;
                tracing::debug!(%service, ?moved, "upgraded connection closed");
            }
            (client, backend) => {
                tracing::debug!(%service, client = ?client.err(), backend = ?backend.err(), "upgrade did not complete");
            }
        }
        drop(permit);
    });
    true
}
