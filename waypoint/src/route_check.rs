//! `GET /route-check?method=M&url=U[&header=name:value]...`: which rule of the waypoint's
//! route table a request would take, why every other rule did or did not match, and what the
//! chosen rule would do (backends with their weights, filters, timeouts), with no traffic
//! sent. `weftctl route-check` asks it. The URL's host is a Service VIP (with its port) or
//! a Service name `name.namespace[.svc[.cluster.local]]`. It also says what authorization
//! would decide for a caller (`caller=NS/SA`, `source-ip=`; a token in the headers is
//! verified against inline or already fetched keys).

use std::net::{Ipv4Addr, SocketAddrV4};

use http::StatusCode;
use serde_json::json;

use crate::app::Waypoint;

/// At most this many `header` parameters are read.
pub const MAX_HEADERS: usize = 32;

fn bad(message: impl std::fmt::Display) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"error": message.to_string()}),
    )
}

/// The Service (`namespace/name`) and port a URL's authority names, if this waypoint serves it.
fn service_of(
    waypoint: &Waypoint,
    uri: &http::Uri,
) -> Option<(String, u16, weft_mesh::registry::AppProtocol)> {
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(80);
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return waypoint.served_service(SocketAddrV4::new(ip, port));
    }
    let mut labels = host.split('.');
    let (name, namespace) = (labels.next()?, labels.next()?);
    let registry = waypoint.registry.borrow();
    let service = registry.service(namespace, name)?;
    let vip = service.cluster_ip?;
    drop(registry);
    waypoint.served_service(SocketAddrV4::new(vip, port))
}

/// The caller's identity (`NS/SA`) and address the query names.
fn caller_of(
    waypoint: &Waypoint,
    caller: Option<&str>,
    source_ip: Option<&str>,
) -> Result<
    (Option<weft_mesh::identity::SpiffeId>, std::net::IpAddr),
    (StatusCode, serde_json::Value),
> {
    let identity = match caller {
        Some(caller) => match caller.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() => Some(
                weft_mesh::identity::SpiffeId::new(&waypoint.identity.trust_domain, ns, sa),
            ),
            _ => {
                return Err(bad(format!(
                    "caller {caller:?} is not NAMESPACE/SERVICEACCOUNT"
                )))
            }
        },
        None => None,
    };
    let source_ip = match source_ip {
        Some(ip) => match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return Err(bad(format!("source-ip {ip:?} is not an address"))),
        },
        None => std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    Ok((identity, source_ip))
}

/// What authorization would say of the request from that caller.
fn authorization_of(
    waypoint: &Waypoint,
    (service, port): (&str, u16),
    (identity, source_ip, caller): (
        Option<weft_mesh::identity::SpiffeId>,
        std::net::IpAddr,
        Option<&str>,
    ),
    parts: &http::request::Parts,
) -> serde_json::Value {
    let tunnel = crate::forward::Tunnel {
        service: service.to_owned(),
        service_port: port,
        client_ip: source_ip,
        client: identity.unwrap_or_else(|| {
            weft_mesh::identity::SpiffeId::new(
                &waypoint.identity.trust_domain,
                caller.unwrap_or("default"),
                "default",
            )
        }),
    };
    let registry = waypoint.registry.borrow().clone();
    crate::authz::explain(waypoint, &tunnel, &registry, parts)
}

/// Answers a route-check query.
pub fn answer(waypoint: &Waypoint, query: Option<&str>) -> (StatusCode, serde_json::Value) {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let Some(url) = value("url") else {
        return bad(
            "give url=<the request's URL>, e.g. http://10.96.0.10/api or http://echo.demo/api",
        );
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        return bad(format!("{url:?} is not a URL"));
    };
    let method = value("method").unwrap_or("GET");
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return bad(format!("{method:?} is not an HTTP method"));
    };
    let (identity, source_ip) = match caller_of(waypoint, value("caller"), value("source-ip")) {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let caller = value("caller-namespace")
        .map(str::to_owned)
        .or_else(|| identity.as_ref().map(|id| id.namespace.clone()));
    let mut request = http::Request::builder().method(method).uri(uri.clone());
    for (_, header) in pairs
        .iter()
        .filter(|(k, _)| k == "header")
        .take(MAX_HEADERS)
    {
        let Some((name, v)) = header.split_once(':') else {
            return bad(format!("header {header:?} is not name: value"));
        };
        request = request.header(name.trim(), v.trim());
    }
    let Ok(request) = request.body(()) else {
        return bad("a header name or value is not valid HTTP");
    };
    let (parts, ()) = request.into_parts();
    let Some((service, port, protocol)) = service_of(waypoint, &uri) else {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": format!("{} names no Service this waypoint ({}) serves", uri.authority().map_or("", |a| a.as_str()), waypoint.gateway)}),
        );
    };
    let authorization = authorization_of(
        waypoint,
        (&service, port),
        (identity, source_ip, caller.as_deref()),
        &parts,
    );
    let table = waypoint.table.load_full();
    let caller = caller.as_deref();
    let verdicts = table.explain((&service, port), caller, &parts);
    let chosen = table.choose((&service, port), caller, &parts).map(|c| {
        json!({
            "route": c.rule.route,
            "rule": c.rule.index,
            "backends": c.rule.backends.iter().map(|b| json!({
                "service": format!("{}/{}", b.namespace, b.name),
                "port": b.port.unwrap_or(port),
                "weight": b.weight,
            })).collect::<Vec<_>>(),
            "filters": c.rule.filters.iter().map(|f| f.kind.clone()).collect::<Vec<_>>(),
            "timeoutMs": c.rule.deadline().map(|d| d.as_millis()),
        })
    });
    let outcome = match (&chosen, table.has_routes(&service, port)) {
        _ if protocol == weft_mesh::registry::AppProtocol::Tcp => {
            "the port is TCP: connections pass through at L4, routes do not apply"
        }
        (Some(_), _) => "routed by the chosen rule",
        (None, true) => "404: no rule matches",
        (None, false) => "no route attaches to the Service: it goes to the Service itself",
    };
    (
        StatusCode::OK,
        json!({
            "service": service,
            "port": port,
            "protocol": protocol.as_str(),
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "outcome": outcome,
            "chosen": chosen,
            "rules": verdicts,
            "authorization": authorization,
        }),
    )
}
