//! A whole manifest file, as the local-mode folder reader parses it: documents up to the first
//! error, then every document through the registry's one code path.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (docs, _error) = weft_mesh::registry::local::parse_documents(text);
    let registry = weft_mesh::registry::Registry::from_objects(
        docs.into_iter().map(|d| ("fuzz.yaml".to_owned(), d)),
    );
    assert!(registry.errors.len() <= weft_mesh::registry::MAX_REPORTS);
});
