//! Policy compilation: an AuthorizationPolicy or TrafficPolicy spec in YAML, compiled, and a
//! compiled AuthorizationPolicy evaluated against a connection (as the node agent does) and
//! against a request with a token's claims (as a waypoint does).
#![no_main]


use weft_mesh::{
    identity::SpiffeId,
    policy::{self, crd::AuthorizationPolicySpec, traffic::TrafficPolicySpec},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = serde_yaml::from_str::<TrafficPolicySpec>(text) {
        let _ = policy::traffic::compile("demo", "fuzz", spec);
    }
    let Ok(spec) = serde_yaml::from_str::<AuthorizationPolicySpec>(text) else {
        return;
    };
    let Ok(compiled) = policy::compile("demo", "fuzz", spec) else {
        return;
    };
    let labels = weft_mesh::registry::Labels::from([("app", "echo")]);
    let identity = SpiffeId::new("cluster.local", "demo", "client");
    let services = ["echo".to_owned()];
    for (identity, port) in [(Some(&identity), 8080), (None, 9000)] {
        let request = policy::Request {
            namespace: "demo",
            labels: &labels,
            services: &services,
            port,
            identity,
            source_ip: "10.244.1.7".parse().expect("an address"),
            strict: false,
            l7: None,
            gateway: None,
            enforced_by_waypoint: &[],
        };
        let _ = policy::evaluate([&compiled], &request);
    }
    let mut headers = http::HeaderMap::new();
    headers.insert("x-tenant", http::HeaderValue::from_static("acme"));
    let user = policy::Authenticated {
        principal: "https://issuer.test/alice".into(),
        audiences: vec!["api".into()],
        presenter: None,
        claims: serde_json::json!({"sub": "alice", "groups": ["ops"], "org": {"team": "x", "n": 3}}),
    };
    for auth in [Some(&user), None] {
        let request = policy::Request {
            namespace: "demo",
            labels: &labels,
            services: &services,
            port: 8080,
            identity: Some(&identity),
            source_ip: "10.244.1.7".parse().expect("an address"),
            strict: false,
            l7: Some(policy::Attributes {
                method: "POST",
                path: "/admin/users",
                host: "echo.demo:8080",
                headers: &headers,
                auth,
            }),
            gateway: Some("waypoint"),
            enforced_by_waypoint: &[],
        };
        let _ = policy::evaluate([&compiled], &request);
    }
});
