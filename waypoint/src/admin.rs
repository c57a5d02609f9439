//! The waypoint's admin API (127.0.0.1:15000: `/status`, `/routes`, `/requests`, `/endpoints`, `/stats`,
//! `/certs`, `/config_dump`, `/route-check`, `POST /logging`), metrics (15020) and readiness (15021), on the mesh core's bounded HTTP/1
//! server, answering through the drain as the agent's do.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use http::StatusCode;
use serde_json::json;
use weft_mesh::admin::{bind, json_reply, serve, Endpoint, Reply};

use crate::{app::Waypoint, config::Config};

/// Every path the waypoint's admin port answers.
pub const ENDPOINTS: &[&str] = &[
    "/status",
    "/routes",
    "/requests?route=&status=&follow=1",
    "/route-check?method=&url=&header=",
    "/endpoints?service=",
    "/stats",
    "/certs",
    "/config_dump",
    "POST /logging?level=",
];

/// `GET /requests?route=&status=&follow=`: the kept request records the query selects, or,
/// with `follow`, those and then new ones as JSON lines.
fn requests(waypoint: &Waypoint, query: Option<&str>) -> Reply {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let parsed = weft_api::requests::RequestQuery::from_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    match parsed {
        Ok(query) => {
            if query.follow {
                return weft_mesh::admin::follow_lines(&waypoint.recent, move |r| query.matches(r));
            }
            let selected: Vec<_> = waypoint
                .recent
                .recent()
                .into_iter()
                .filter(|r| query.matches(r))
                .collect();
            json_reply((StatusCode::OK, json!(selected)))
        }
        Err(e) => json_reply((
            StatusCode::BAD_REQUEST,
            json!(weft_api::ErrorBody {
                error: e.to_string(),
                valid: e.valid(),
            }),
        )),
    }
}

fn get(waypoint: &Waypoint, path: &str) -> (StatusCode, serde_json::Value) {
    match path {
        "/status" => {
            let registry = waypoint.registry.borrow().clone();
            let table = waypoint.table.load();
            (
                StatusCode::OK,
                json!({
                    "waypoint": waypoint.gateway.to_string(),
                    "identity": waypoint.identity.to_string(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "ready": waypoint.ready.load(Ordering::Relaxed),
                    "services": table.services().collect::<Vec<_>>(),
                    "registry": {
                        "services": registry.services.len(),
                        "routes": registry.routes.len(),
                        "pods": registry.pods.len(),
                    },
                }),
            )
        }
        "/routes" => {
            let table = waypoint.table.load();
            let services: Vec<serde_json::Value> = table
                .services()
                .map(|service| {
                    let rules: Vec<serde_json::Value> = table
                        .rules_of(service)
                        .iter()
                        .map(|r| {
                            json!({
                                "route": r.route,
                                "rule": r.index,
                                "backends": r.backends.iter().map(|b| json!({
                                    "service": format!("{}/{}", b.namespace, b.name),
                                    "port": b.port,
                                    "weight": b.weight,
                                })).collect::<Vec<_>>(),
                                "filters": r.filters.iter().map(|f| f.kind.clone()).collect::<Vec<_>>(),
                                "requestTimeoutMs": r.request_timeout.map(|t| t.as_millis()),
                                "backendRequestTimeoutMs": r.backend_timeout.map(|t| t.as_millis()),
                            })
                        })
                        .collect();
                    json!({"service": service, "rules": rules})
                })
                .collect();
            let problems: Vec<serde_json::Value> = table
                .problems
                .iter()
                .map(|p| json!({"route": p.route, "problem": p.problem}))
                .collect();
            (
                StatusCode::OK,
                json!({"services": services, "problems": problems, "statuses": table.statuses}),
            )
        }
        "/stats" => (
            StatusCode::OK,
            json!({
                "requests": waypoint.requests.snapshot(),
                "pool": waypoint.pool.stats(),
                "limits": waypoint.limits.snapshot(),
            }),
        ),
        "/certs" => (StatusCode::OK, json!(waypoint.certs.certs())),
        "/config_dump" => (
            StatusCode::OK,
            json!({"registry": *waypoint.registry.borrow().clone()}),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            json!({"error": "unknown path", "valid": ENDPOINTS}),
        ),
    }
}

/// Starts the three ports; they answer until the process exits.
pub async fn start(
    waypoint: &Arc<Waypoint>,
    config: &Config,
    drain: weft_mesh::drain::Signal,
    log_filter: Option<weft_mesh::admin::SetLogFilter>,
) -> Result<(), weft_mesh::admin::AdminError> {
    let kept = |bounds: weft_mesh::limits::Http1Limits| weft_mesh::serve::Serving {
        name: bounds.listener,
        limits: waypoint.limits.clone(),
        drain: drain.clone(),
        on_drain: weft_mesh::serve::OnDrain::KeepServing,
    };
    let listen = |addr: SocketAddr| bind(addr);
    let admin = listen(config.admin_addr).await?;
    let metrics = listen(config.metrics_addr).await?;
    let readiness = listen(config.readiness_addr).await?;
    let state = waypoint.clone();
    tokio::spawn(serve(
        admin,
        weft_mesh::limits::ADMIN,
        kept(weft_mesh::limits::ADMIN),
        Arc::new(
            move |method: &http::Method, path: &str, query: Option<&str>| {
                match weft_mesh::admin::endpoint(method, path, query) {
                    Endpoint::Get("/route-check") => {
                        json_reply(crate::route_check::answer(&state, query))
                    }
                    Endpoint::Get("/requests") => requests(&state, query),
                    Endpoint::Get("/endpoints") => {
                        let service = form_urlencoded::parse(query.unwrap_or("").as_bytes())
                            .find(|(k, _)| k == "service")
                            .map(|(_, v)| v.into_owned());
                        json_reply((
                            StatusCode::OK,
                            json!(crate::resilience::report::endpoints(
                                &state,
                                service.as_deref()
                            )),
                        ))
                    }
                    Endpoint::Get(path) => json_reply(get(&state, path)),
                    Endpoint::SetLogLevel(level) => {
                        json_reply(weft_mesh::admin::set_log_level(log_filter.as_ref(), level))
                    }
                    Endpoint::Flows(_) => json_reply((
                        StatusCode::NOT_FOUND,
                        json!({"error": "a waypoint keeps requests, not connection flows: GET /requests"}),
                    )),
                    Endpoint::NotAllowed => json_reply((
                        StatusCode::METHOD_NOT_ALLOWED,
                        json!({"error": "GET, or POST /logging"}),
                    )),
                }
            },
        ),
    ));
    let state = waypoint.clone();
    tokio::spawn(serve(
        metrics,
        weft_mesh::limits::METRICS,
        kept(weft_mesh::limits::METRICS),
        Arc::new(
            move |_: &http::Method, path: &str, _: Option<&str>| match path {
                "/metrics" => {
                    state.requests.refresh(&state.resilience);
                    Reply::Whole(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        state.requests.encode(),
                    )
                }
                _ => json_reply((StatusCode::NOT_FOUND, json!({"error": "try /metrics"}))),
            },
        ),
    ));
    let state = waypoint.clone();
    tokio::spawn(serve(
        readiness,
        weft_mesh::limits::READINESS,
        kept(weft_mesh::limits::READINESS),
        Arc::new(move |_: &http::Method, path: &str, _: Option<&str>| {
            json_reply(match path {
                "/healthz/ready" if drain.is_draining() => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "waitingFor": "nothing: the waypoint is draining"}),
                ),
                "/healthz/ready" if state.ready.load(Ordering::Relaxed) => {
                    (StatusCode::OK, json!({"ready": true}))
                }
                "/healthz/ready" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "waitingFor": "start-up"}),
                ),
                "/healthz/live" => (StatusCode::OK, json!({"live": true})),
                _ => (
                    StatusCode::NOT_FOUND,
                    json!({"error": "try /healthz/ready"}),
                ),
            })
        }),
    ));
    Ok(())
}
