//! The Gateway API filters that change where a request goes: `RequestRedirect` (the waypoint
//! answers with a redirect) and `URLRewrite` (the request is sent on with another path or
//! host).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use weft_mesh::registry::routes::{PathModifier, Redirect, Rewrite};

use crate::{forward::Body, routing::Rule};

/// The path `modifier` gives `path`; `prefix` is the matched prefix for
/// `ReplacePrefixMatch`.
fn modified_path(path: &str, modifier: &PathModifier, prefix: Option<&str>) -> String {
    match modifier.kind.as_str() {
        "ReplaceFullPath" => modifier
            .replace_full_path
            .clone()
            .unwrap_or_else(|| path.into()),
        "ReplacePrefixMatch" => {
            let replacement = modifier.replace_prefix_match.as_deref().unwrap_or("/");
            let rest = prefix.and_then(|p| path.strip_prefix(p)).unwrap_or(path);
            let joined = format!(
                "{}/{}",
                replacement.trim_end_matches('/'),
                rest.trim_start_matches('/')
            );
            if joined.len() > 1 && !rest.is_empty() {
                joined
            } else {
                let trimmed = joined.trim_end_matches('/');
                if trimmed.is_empty() {
                    "/".into()
                } else {
                    trimmed.into()
                }
            }
        }
        _ => path.into(),
    }
}

/// The longest `PathPrefix` of `rule` that `path` matches, for `ReplacePrefixMatch`.
fn matched_prefix<'a>(rule: Option<&'a Rule>, path: &str) -> Option<&'a str> {
    rule?
        .prefixes()
        .filter(|p| path.starts_with(*p))
        .max_by_key(|p| p.len())
}

/// Answers `request` with the redirect `redirect` describes (302 unless it says 301);
/// `ReplacePrefixMatch` replaces the prefix of `rule` the path matched.
pub fn redirect(
    request: &http::request::Parts,
    redirect: &Redirect,
    rule: Option<&Rule>,
) -> Response<Body> {
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri.authority().map(http::uri::Authority::as_str))
        .unwrap_or("");
    let (authority_host, host_port) = host
        .split_once(':')
        .map_or((host, None), |(h, p)| (h, Some(p)));
    let scheme = redirect.scheme.as_deref().unwrap_or("http");
    let hostname = redirect.hostname.as_deref().unwrap_or(authority_host);
    let port = redirect
        .port
        .map(|p| p.to_string())
        .or_else(|| host_port.map(str::to_owned))
        .filter(|p| !((scheme == "http" && p == "80") || (scheme == "https" && p == "443")));
    let path = redirect.path.as_ref().map_or_else(
        || request.uri.path().to_owned(),
        |m| {
            let path = request.uri.path();
            modified_path(path, m, matched_prefix(rule, path))
        },
    );
    let query = request
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = match port {
        Some(port) => format!("{scheme}://{hostname}:{port}{path}{query}"),
        None => format!("{scheme}://{hostname}{path}{query}"),
    };
    let status = match redirect.status_code {
        Some(301) => StatusCode::MOVED_PERMANENTLY,
        _ => StatusCode::FOUND,
    };
    let mut response = Response::new(crate::forward::full(Bytes::new()));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert("x-weft-reason", HeaderValue::from_static("redirected"));
    response
}

/// Rewrites `request`'s path and host as `rewrite` says.
pub fn rewrite(request: &mut http::request::Parts, rewrite: &Rewrite, rule: Option<&Rule>) {
    if let Some(hostname) = &rewrite.hostname {
        if let Ok(value) = HeaderValue::from_str(hostname) {
            request.headers.insert(header::HOST, value);
        }
    }
    if let Some(modifier) = &rewrite.path {
        let path = request.uri.path().to_owned();
        let prefix = matched_prefix(rule, &path);
        let new_path = modified_path(&path, modifier, prefix);
        let query = request
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let mut parts = request.uri.clone().into_parts();
        parts.path_and_query = format!("{new_path}{query}").parse().ok();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            request.uri = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modifier(kind: &str, value: &str) -> PathModifier {
        PathModifier {
            kind: kind.into(),
            replace_full_path: Some(value.into()),
            replace_prefix_match: Some(value.into()),
        }
    }

    #[test]
    fn prefix_replacement_keeps_the_rest_of_the_path() {
        let m = modifier("ReplacePrefixMatch", "/v2");
        assert_eq!(modified_path("/v1/users/7", &m, Some("/v1")), "/v2/users/7");
        assert_eq!(modified_path("/v1", &m, Some("/v1")), "/v2");
        let root = modifier("ReplacePrefixMatch", "/");
        assert_eq!(modified_path("/v1/users", &root, Some("/v1")), "/users");
        assert_eq!(modified_path("/v1", &root, Some("/v1")), "/");
        assert_eq!(
            modified_path("/x", &modifier("ReplaceFullPath", "/y"), None),
            "/y"
        );
    }
}
