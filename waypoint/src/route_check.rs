//! `GET /route-check?method=M&url=U[&header=name:value]...`: which rule of the waypoint's
//! route table a request would take, why every other rule did or did not match, and what the
//! chosen rule would do (backends with their weights, filters, timeouts), with no traffic
//! sent. `weftctl route-check` asks it. The URL's host is a Service VIP (with its port) or
//! a Service name `name.namespace[.svc[.cluster.local]]`.

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
    let caller = value("caller-namespace").map(str::to_owned);
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
    let table = waypoint.table.load_full();
    let caller = caller.as_deref();
    let verdicts = table.explain(&service, caller, &parts);
    let chosen = table.choose(&service, caller, &parts).map(|c| {
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
    let outcome = match (&chosen, table.has_routes(&service)) {
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
        }),
    )
}
