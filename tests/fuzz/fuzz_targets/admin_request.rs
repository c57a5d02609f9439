//! The admin API's request and query parsing: a request target and method as hyper would
//! hand them over, classified into an endpoint, and a `/flows` query read into its filter.
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
    if let weft_mesh::admin::Endpoint::Flows(query) =
        weft_mesh::admin::endpoint(&method, uri.path(), uri.query())
    {
        let _ = weft_mesh::flows::FlowFilter::parse(query, u64::MAX);
    }
    for key in ["follow", "level", ""] {
        let _ = weft_mesh::admin::query_value(uri.query(), key);
    }
});
