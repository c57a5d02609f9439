//! What weftctl does with waypoints: `waypoint generate` prints the objects a waypoint needs in
//! Kubernetes, as Weft's controller would create them for a Gateway of class `weft-waypoint`
//! (SPEC, Waypoints): the Gateway, a ServiceAccount named after it (its identity), a Deployment
//! running `weft-waypoint`, and a Service for its HBONE port; `route-check` asks a waypoint
//! which rule a request would take, and shows why.

use std::fmt::Write as _;

/// The image the generated Deployment runs when none is given.
pub use weft_api::waypoint::DEFAULT_IMAGE;

/// The four objects, as one YAML stream.
pub fn generate(namespace: &str, name: &str, image: &str) -> anyhow::Result<String> {
    let objects = std::iter::once(weft_api::waypoint::gateway(namespace, name))
        .chain(weft_api::waypoint::objects(namespace, name, image));
    let mut text = String::new();
    for object in objects {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(&object)?);
    }
    Ok(text)
}

/// Who a route-check asks for: namespace (consumer routes), identity `NS/SA` and address
/// (policies).
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller<'a> {
    pub namespace: Option<&'a str>,
    pub identity: Option<&'a str>,
    pub source_ip: Option<&'a str>,
}

/// The admin path of a route-check for `method url` with `headers` (`name: value`).
pub fn route_check_path(method: &str, url: &str, headers: &[String], caller: Caller<'_>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("method", method).append_pair("url", url);
    for header in headers {
        query.append_pair("header", header);
    }
    for (key, value) in [
        ("caller-namespace", caller.namespace),
        ("caller", caller.identity),
        ("source-ip", caller.source_ip),
    ] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    format!("/route-check?{}", query.finish())
}

/// A route-check answer for people: the outcome, the chosen rule's backends and filters, and
/// one line per rule with why it was or was not taken.
pub fn render_route_check(answer: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let mut out = format!(
        "{} {} to {} port {}: {}\n",
        text(&answer["method"]),
        text(&answer["path"]),
        text(&answer["service"]),
        answer["port"],
        text(&answer["outcome"]),
    );
    if let Some(chosen) = answer["chosen"].as_object() {
        let backends: Vec<String> = chosen["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                format!(
                    "{}:{} weight {}",
                    text(&b["service"]),
                    b["port"],
                    b["weight"]
                )
            })
            .collect();
        let _ = write!(
            out,
            "chosen: {} rule {}; backends {}; filters {}\n\n",
            text(&chosen["route"]),
            chosen["rule"],
            if backends.is_empty() {
                "none".into()
            } else {
                backends.join(", ")
            },
            chosen["filters"]
                .as_array()
                .map(|f| f.iter().map(text).collect::<Vec<_>>().join(", "))
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| "none".into()),
        );
    }
    let rows = answer["rules"].as_array().into_iter().flatten().map(|r| {
        vec![
            text(&r["route"]),
            r["rule"].to_string(),
            if r["chosen"] == true { "yes" } else { "" }.to_owned(),
            text(&r["why"]),
        ]
    });
    out.push_str(&crate::render::table(
        &["ROUTE", "RULE", "CHOSEN", "WHY"],
        rows,
    ));
    let authz = &answer["authorization"];
    if authz.is_object() {
        let _ = write!(
            out,
            "\nauthorization: {} ({} {}): {}\n",
            text(&authz["verdict"]),
            authz["status"],
            text(&authz["reason"]),
            text(&authz["detail"]),
        );
        if let Some(user) = authz["requestPrincipal"].as_str() {
            let _ = writeln!(out, "request principal: {user}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_objects_name_the_gateway_its_identity_and_its_ports() {
        let text = generate("demo", "waypoint", DEFAULT_IMAGE).expect("yaml");
        let docs: Vec<serde_yaml::Value> = text
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).expect("valid"))
            .collect();
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["Gateway", "ServiceAccount", "Deployment", "Service"]
        );
        assert_eq!(docs[0]["spec"]["gatewayClassName"], "weft-waypoint");
        let pod = &docs[2]["spec"]["template"];
        assert_eq!(pod["spec"]["serviceAccountName"], "waypoint");
        assert_eq!(
            pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "waypoint"
        );
        assert_eq!(docs[3]["spec"]["ports"][0]["port"], 15008);
    }
}
