//! Who may make this request: the `RequestAuthentication` that applies checks the end user's
//! token (401 on a bad one; none at all passes as unauthenticated), then the
//! `AuthorizationPolicy` objects that target the waypoint's Gateway or the Service decide
//! (403, or gRPC `PERMISSION_DENIED`), with the policy and rule that decided said in the
//! answer, the request record, the access log and the metrics.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use weft_mesh::{
    policy::{
        jwt::{self, JwtError},
        request_auth::{CompiledJwtRule, Keys, RequestAuth},
        Attributes, Authenticated, Decision, Verdict,
    },
    registry::Registry,
};

use crate::{
    app::Waypoint,
    forward::{full, grpc_answer, Body, Reason, Tunnel},
};

/// What authorization said of a request, for its record.
#[derive(Debug, Clone, Default)]
pub struct Judged {
    /// `allow` or `deny`; empty when nothing was judged (the record leaves it out).
    pub verdict: &'static str,
    pub policy: Option<String>,
    pub rule: Option<usize>,
    /// `<issuer>/<subject>` of a valid token.
    pub request_principal: Option<String>,
    pub detail: String,
}

/// A request refused before routing, with its answer.
#[derive(Debug)]
pub struct Refused {
    pub response: Response<Body>,
    pub reason: Reason,
    pub judged: Judged,
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The answer to a refused request: HTTP `status` with a short body, or for gRPC a
/// trailers-only response with `grpc_code`.
fn refusal(
    grpc: bool,
    status: StatusCode,
    grpc_code: u32,
    reason: Reason,
    detail: &str,
) -> Response<Body> {
    if grpc {
        return grpc_answer(grpc_code, detail, reason);
    }
    let mut response = Response::new(full(Bytes::from(format!("{detail}\n"))));
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"weft\""),
        );
    }
    response
        .headers_mut()
        .insert("x-weft-reason", HeaderValue::from_static(reason.as_str()));
    response
}

/// A token found in a rule's locations, and where, so it can be removed.
struct Found {
    token: String,
    header: Option<http::HeaderName>,
}

fn find_token(rule: &CompiledJwtRule, parts: &http::request::Parts) -> Option<Found> {
    for (name, prefix) in &rule.from_headers {
        for value in parts.headers.get_all(name) {
            let Ok(text) = value.to_str() else { continue };
            let token = if prefix.is_empty() {
                Some(text)
            } else {
                text.get(..prefix.len())
                    .filter(|p| p.eq_ignore_ascii_case(prefix))
                    .map(|_| &text[prefix.len()..])
            };
            if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
                return Some(Found {
                    token: token.to_owned(),
                    header: Some(name.clone()),
                });
            }
        }
    }
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| rule.from_params.iter().any(|p| p == k))
        .map(|(_, v)| Found {
            token: v.into_owned(),
            header: None,
        })
}

/// The `RequestAuthentication` objects for this request, and their rules.
fn applying<'r>(
    registry: &'r Registry,
    waypoint: &Waypoint,
    tunnel: &Tunnel,
) -> Vec<(&'r RequestAuth, &'r CompiledJwtRule)> {
    let (namespace, service) = tunnel
        .service
        .split_once('/')
        .unwrap_or(("", &tunnel.service));
    registry
        .request_auths
        .iter()
        .filter(|a| a.applies(namespace, &waypoint.gateway.name, service))
        .flat_map(|a| a.rules.iter().map(move |r| (a, r)))
        .collect()
}

type Rules<'r> = [(&'r RequestAuth, &'r CompiledJwtRule)];

/// The token a request carries, the rule of its issuer and its header fields; `Ok(None)`
/// when it carries none.
#[expect(clippy::type_complexity, reason = "a private step of authenticate")]
fn locate<'r>(
    rules: &Rules<'r>,
    parts: &http::request::Parts,
) -> Result<Option<(Found, jwt::Peeked, (&'r RequestAuth, &'r CompiledJwtRule))>, (String, JwtError)>
{
    let Some((found, first)) = rules
        .iter()
        .find_map(|(a, r)| find_token(r, parts).map(|f| (f, *a)))
    else {
        return Ok(None);
    };
    let peeked = jwt::peek(&found.token).map_err(|e| (first.id(), e))?;
    let issuer = peeked.issuer.clone().unwrap_or_default();
    let Some(chosen) = rules.iter().find(|(_, r)| r.issuer == issuer) else {
        return Err((first.id(), JwtError::UnknownIssuer(issuer)));
    };
    Ok(Some((found, peeked, *chosen)))
}

/// Checks the end user's token, if any. `Ok(None)`: no token (unauthenticated).
async fn authenticate(
    waypoint: &Waypoint,
    rules: &Rules<'_>,
    parts: &mut http::request::Parts,
) -> Result<Option<Authenticated>, (String, JwtError)> {
    let Some((found, peeked, (auth, rule))) = locate(rules, parts)? else {
        return Ok(None);
    };
    let keys = match &rule.keys {
        Keys::Inline(keys) => keys.clone(),
        Keys::Uri(uri) => waypoint
            .jwks
            .keys(waypoint, uri, peeked.kid.as_deref())
            .await
            .map_err(|e| (auth.id(), JwtError::KeysUnavailable(format!("{uri} ({e})"))))?,
    };
    let user = jwt::verify(&found.token, &keys, &rule.issuer, &rule.audiences)
        .map_err(|e| (auth.id(), e))?;
    pass_on(rule, &found, &user, parts);
    Ok(Some(user))
}

/// Removes the token and copies claims into headers, as the rule says.
fn pass_on(
    rule: &CompiledJwtRule,
    found: &Found,
    user: &Authenticated,
    parts: &mut http::request::Parts,
) {
    if !rule.forward_original_token {
        if let Some(name) = &found.header {
            parts.headers.remove(name);
        }
    }
    for (name, path) in &rule.output_claim_to_headers {
        let values = weft_mesh::policy::l7::claim_values(&user.claims, path);
        if let Ok(value) = HeaderValue::from_str(&values.join(",")) {
            if !values.is_empty() {
                parts.headers.insert(name.clone(), value);
            }
        }
    }
}

/// What [`check`] would decide, without waiting: a `jwksUri` set is used only as last
/// fetched. For route-check.
pub fn explain(
    waypoint: &Waypoint,
    tunnel: &Tunnel,
    registry: &Registry,
    parts: &http::request::Parts,
) -> serde_json::Value {
    let rules = applying(registry, waypoint, tunnel);
    let verified = locate(&rules, parts).and_then(|located| {
        let Some((found, _, (auth, rule))) = located else {
            return Ok(None);
        };
        let keys = match &rule.keys {
            Keys::Inline(keys) => Some(keys.clone()),
            Keys::Uri(uri) => waypoint.jwks.cached(uri),
        };
        let keys = keys.ok_or_else(|| {
            (
                auth.id(),
                JwtError::KeysUnavailable(format!("{} (not fetched yet)", auth.id())),
            )
        })?;
        jwt::verify(&found.token, &keys, &rule.issuer, &rule.audiences)
            .map(Some)
            .map_err(|e| (auth.id(), e))
    });
    let user = match verified {
        Ok(user) => user,
        Err((policy, error)) => {
            return serde_json::json!({
                "verdict": "deny",
                "status": 401,
                "reason": error.reason(),
                "requestAuthentication": policy,
                "detail": format!("Jwt verification fails: {error}"),
            })
        }
    };
    let decision = authorize(registry, waypoint, tunnel, parts, user.as_ref());
    let allowed = decision.verdict == Verdict::Allow;
    serde_json::json!({
        "verdict": if allowed { "allow" } else { "deny" },
        "status": if allowed { 200 } else { 403 },
        "reason": decision.reason.as_str(),
        "policy": decision.policy,
        "rule": decision.rule,
        "requestPrincipal": user.map(|u| u.principal),
        "detail": decision.detail,
        "notes": decision.notes,
    })
}

/// Decides the request under the registry's policies.
fn authorize(
    registry: &Registry,
    waypoint: &Waypoint,
    tunnel: &Tunnel,
    parts: &http::request::Parts,
    user: Option<&Authenticated>,
) -> Decision {
    let (namespace, service) = tunnel
        .service
        .split_once('/')
        .unwrap_or(("", &tunnel.service));
    let services = [service.to_owned()];
    let labels = weft_mesh::registry::Labels::default();
    let host = parts
        .uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    let request = weft_mesh::policy::Request {
        namespace,
        labels: &labels,
        services: &services,
        port: tunnel.service_port,
        identity: Some(&tunnel.client),
        source_ip: tunnel.client_ip,
        strict: false,
        l7: Some(Attributes {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            host,
            headers: &parts.headers,
            auth: user,
        }),
        gateway: Some(&waypoint.gateway.name),
        enforced_by_waypoint: &[],
    };
    weft_mesh::policy::evaluate(
        registry
            .policies
            .iter()
            .filter(|p| p.namespace == namespace),
        &request,
    )
}

/// Authenticates and authorizes one request; the token is removed and claims copied into
/// headers as the rule says. `Err`: the answer the client gets instead.
pub async fn check(
    waypoint: &Waypoint,
    tunnel: &Tunnel,
    registry: &Registry,
    parts: &mut http::request::Parts,
) -> Result<Judged, Box<Refused>> {
    let grpc = is_grpc(&parts.headers);
    let rules = applying(registry, waypoint, tunnel);
    let user = match authenticate(waypoint, &rules, parts).await {
        Ok(user) => user,
        Err((policy, error)) => {
            let reason = Reason::Unauthenticated(error.reason());
            let detail =
                format!("Jwt verification fails: {error} (RequestAuthentication {policy})");
            tracing::info!(service = %tunnel.service, client = %tunnel.client, reason = reason.as_str(), %detail, "request refused");
            return Err(Box::new(Refused {
                response: refusal(grpc, StatusCode::UNAUTHORIZED, 16, reason, &detail),
                reason,
                judged: Judged {
                    verdict: "deny",
                    policy: Some(policy),
                    rule: None,
                    request_principal: None,
                    detail,
                },
            }));
        }
    };
    let decision = authorize(registry, waypoint, tunnel, parts, user.as_ref());
    if !decision.notes.is_empty() {
        tracing::info!(target: "weft_audit", service = %tunnel.service, client = %tunnel.client, notes = ?decision.notes, "policy notes");
    }
    let judged = Judged {
        verdict: match decision.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        },
        policy: decision.policy.clone(),
        rule: decision.rule,
        request_principal: user.map(|u| u.principal),
        detail: decision.detail.clone(),
    };
    if decision.verdict == Verdict::Allow {
        return Ok(judged);
    }
    let reason = Reason::Denied(decision.reason);
    let detail = format!("RBAC: access denied: {}", decision.detail);
    Err(Box::new(Refused {
        response: refusal(grpc, StatusCode::FORBIDDEN, 7, reason, &detail),
        reason,
        judged,
    }))
}
