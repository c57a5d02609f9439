//! The admin API's request and query parsing: a request target and method as hyper would
//! hand them over, classified into an endpoint.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (method, target) = match data.iter().position(|&b| b == b' ') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"GET"[..], data),
    };
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let _ = weft_mesh::admin::endpoint(&method, uri.path(), uri.query());
    for key in ["follow", "level", ""] {
        let _ = weft_mesh::admin::query_value(uri.query(), key);
    }
});
