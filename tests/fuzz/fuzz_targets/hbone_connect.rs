//! The HBONE request path from a CONNECT's method and `:authority` (as h2 would hand them
//! over) to the target decision: a destination of this pod, or a refusal with its reason.
#![no_main]

use std::net::Ipv4Addr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (method, authority) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"CONNECT"[..], data),
    };
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(authority) else {
        return;
    };
    let pod = Ipv4Addr::new(10, 244, 1, 5);
    if let Ok(target) = weft_mesh::hbone::server::connect_target(&method, &uri, pod) {
        assert_eq!(target.ip(), pod);
        assert!(!weft_mesh::ports::AGENT_PORTS.contains(&target.port()));
    }
});
