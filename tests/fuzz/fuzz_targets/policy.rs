//! Policy compilation: an AuthorizationPolicy or TrafficPolicy spec in YAML, compiled, and a
//! compiled AuthorizationPolicy evaluated against a connection.
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
        };
        let _ = policy::evaluate([&compiled], &request);
    }
});
