//! What weftctl prints for a waypoint: its status, route table (each route's status and its
//! rules), recent requests and request counts, as tables for people.

use std::fmt::Write as _;

use weft_api::requests::RequestRecord;

use crate::render::table;

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Whether a `/status` answer is a waypoint's (an agent's names its node instead).
pub fn is_waypoint_status(status: &serde_json::Value) -> bool {
    status.get("waypoint").is_some()
}

/// `weftctl --waypoint NS/NAME status`.
pub fn status(status: &serde_json::Value) -> String {
    let services: Vec<String> = status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let registry = &status["registry"];
    format!(
        "waypoint  {}\nidentity  {}\nversion   {}\nready     {}\nservices  {}\nregistry  {} services, {} routes, {} pods",
        text(&status["waypoint"]),
        text(&status["identity"]),
        text(&status["version"]),
        text(&status["ready"]),
        if services.is_empty() { "none".into() } else { services.join(", ") },
        text(&registry["services"]),
        text(&registry["routes"]),
        text(&registry["pods"]),
    )
}

/// `weftctl --waypoint NS/NAME routes`: statuses, then rules, then what could not be used.
pub fn routes(answer: &serde_json::Value) -> String {
    let condition = |ok: &serde_json::Value, reason: &serde_json::Value| {
        format!(
            "{}/{}",
            if ok.as_bool() == Some(true) {
                "True"
            } else {
                "False"
            },
            text(reason)
        )
    };
    let statuses = table(
        &["ROUTE", "PARENT", "ACCEPTED", "RESOLVEDREFS", "MESSAGE"],
        answer["statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                vec![
                    text(&s["route"]),
                    text(&s["parent"]),
                    condition(&s["accepted"], &s["acceptedReason"]),
                    condition(&s["resolvedRefs"], &s["resolvedRefsReason"]),
                    s["message"].as_str().unwrap_or("").to_owned(),
                ]
            }),
    );
    let mut rules = Vec::new();
    for service in answer["services"].as_array().into_iter().flatten() {
        for rule in service["rules"].as_array().into_iter().flatten() {
            let backends: Vec<String> = rule["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    format!(
                        "{}:{} w{}",
                        text(&b["service"]),
                        text(&b["port"]),
                        text(&b["weight"])
                    )
                })
                .collect();
            let filters: Vec<String> = rule["filters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            rules.push(vec![
                text(&service["service"]),
                text(&rule["route"]),
                text(&rule["rule"]),
                if backends.is_empty() {
                    "-".into()
                } else {
                    backends.join(", ")
                },
                if filters.is_empty() {
                    "-".into()
                } else {
                    filters.join(", ")
                },
                text(&rule["requestTimeoutMs"]),
            ]);
        }
    }
    let mut out = format!(
        "{statuses}\n\n{}",
        table(
            &[
                "SERVICE",
                "ROUTE",
                "RULE",
                "BACKENDS",
                "FILTERS",
                "TIMEOUT MS"
            ],
            rules
        )
    );
    for problem in answer["problems"].as_array().into_iter().flatten() {
        let _ = write!(
            out,
            "\nnot usable: {}: {}",
            text(&problem["route"]),
            text(&problem["problem"])
        );
    }
    out
}

/// `weftctl requests`: one row per request, oldest first.
pub fn requests(records: &[RequestRecord]) -> String {
    table(
        &[
            "METHOD",
            "AUTHORITY",
            "PATH",
            "STATUS",
            "ROUTE",
            "BACKEND",
            "UPSTREAM",
            "IN",
            "OUT",
            "MS",
            "REASON",
            "POLICY",
            "USER",
        ],
        records.iter().map(|r| {
            vec![
                r.method.clone(),
                r.authority.clone(),
                r.path.clone(),
                r.status.to_string(),
                r.route.clone(),
                r.backend.clone(),
                r.upstream_pod
                    .clone()
                    .or_else(|| r.upstream.clone())
                    .unwrap_or_else(|| "-".into()),
                r.request_bytes.to_string(),
                r.response_bytes.to_string(),
                r.duration_ms.to_string(),
                r.reason.clone(),
                decided_by(r),
                r.request_principal.clone().unwrap_or_else(|| "-".into()),
            ]
        }),
    )
}

/// One followed request, on one line.
/// The policy and rule that decided a request (`demo/p rule 0`), or `-`.
fn decided_by(r: &RequestRecord) -> String {
    match (&r.policy, r.rule) {
        (Some(policy), Some(rule)) => format!("{policy} rule {rule}"),
        (Some(policy), None) => policy.clone(),
        _ => "-".into(),
    }
}

pub fn request_line(r: &RequestRecord) -> String {
    format!(
        "{} {} {}{} {} route={} backend={} upstream={} in={} out={} {}ms reason={} attempts={} verdict={} policy={} user={}",
        r.client,
        r.method,
        r.authority,
        r.path,
        r.status,
        r.route,
        r.backend,
        r.upstream_pod
            .as_deref()
            .or(r.upstream.as_deref())
            .unwrap_or("-"),
        r.request_bytes,
        r.response_bytes,
        r.duration_ms,
        r.reason,
        r.attempts,
        r.verdict.as_deref().unwrap_or("-"),
        decided_by(r),
        r.request_principal.as_deref().unwrap_or("-"),
    )
}

/// `weftctl --waypoint NS/NAME stats`: request counts, then limits hit.
pub fn stats(answer: &serde_json::Value) -> String {
    let mut out = table(
        &[
            "SERVICE", "ROUTE", "METHOD", "CODE", "REASON", "SOURCE", "REQUESTS",
        ],
        answer["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                [
                    "service", "route", "method", "code", "reason", "source", "requests",
                ]
                .map(|k| text(&r[k]))
                .to_vec()
            }),
    );
    let limits: Vec<String> = answer["limits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "{} {}: {}",
                text(&l["listener"]),
                text(&l["limit"]),
                text(&l["hits"])
            )
        })
        .collect();
    let _ = write!(
        out,
        "\n\nlimits hit: {}",
        if limits.is_empty() {
            "none".into()
        } else {
            limits.join(", ")
        }
    );
    out
}

/// `weftctl --waypoint NS/NAME endpoints SERVICE`: each backend port with its breaker's
/// occupancy, then each endpoint's health, ejection, load, latency and locality.
pub fn endpoints(backends: &[weft_api::resilience::BackendReport]) -> String {
    if backends.is_empty() {
        return "no such Service, or it has no port".into();
    }
    backends
        .iter()
        .map(|b| {
            let head = format!(
                "{}  policy {}  algorithm {}  in flight {} requests, {} connections, {} pending, {} retries",
                b.backend,
                b.policy.as_deref().unwrap_or("none"),
                b.algorithm,
                b.requests_in_flight,
                b.connections_in_flight,
                b.pending,
                b.retries_in_flight,
            );
            let rows = table(
                &[
                    "ENDPOINT", "POD", "HEALTH", "EJECTED FOR", "EJECTIONS", "ACTIVE", "EWMA",
                    "REQUESTS", "ERRORS", "LOCALITY",
                ],
                b.endpoints.iter().map(|e| {
                    vec![
                        e.address.clone(),
                        e.pod.clone().unwrap_or_else(|| "-".into()),
                        e.health.clone(),
                        e.ejected_for_ms
                            .map_or_else(|| "-".into(), |ms| format!("{}.{}s", ms / 1000, ms % 1000 / 100)),
                        e.ejections.to_string(),
                        e.active_requests.to_string(),
                        format!("{:.2}ms", e.ewma_ms),
                        e.requests.to_string(),
                        e.errors.to_string(),
                        e.locality.clone().unwrap_or_else(|| "-".into()),
                    ]
                }),
            );
            format!("{head}\n{rows}")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_show_each_status_and_rule() {
        let answer = serde_json::json!({
            "statuses": [{"route": "demo/missing", "parent": "demo/missing", "accepted": true,
                "acceptedReason": "Accepted", "resolvedRefs": false,
                "resolvedRefsReason": "BackendNotFound", "message": "backend Services not found: demo/nowhere"}],
            "services": [{"service": "demo/echo", "rules": [{"route": "demo/echo", "rule": 0,
                "backends": [{"service": "demo/echo-v1", "port": 80, "weight": 90}],
                "filters": ["RequestHeaderModifier"], "requestTimeoutMs": null}]}],
            "problems": [{"route": "demo/bad", "problem": "rule 0: path: regex"}],
        });
        let out = routes(&answer);
        assert!(out.contains("False/BackendNotFound"), "{out}");
        assert!(out.contains("True/Accepted"), "{out}");
        assert!(out.contains("demo/echo-v1:80 w90"), "{out}");
        assert!(out.contains("not usable: demo/bad: rule 0"), "{out}");
    }

    #[test]
    fn a_request_row_names_its_route_backend_and_upstream_pod() {
        let record = RequestRecord {
            method: "GET".into(),
            authority: "10.96.0.20".into(),
            path: "/x".into(),
            status: 200,
            route: "demo/echo rule 4".into(),
            backend: "demo/echo-v1".into(),
            upstream_pod: Some("demo/echo-v1".into()),
            reason: "routed".into(),
            ..RequestRecord::default()
        };
        let out = requests(std::slice::from_ref(&record));
        assert!(out.contains("demo/echo rule 4"), "{out}");
        assert!(request_line(&record).contains("route=demo/echo rule 4 backend=demo/echo-v1"));
    }
}
