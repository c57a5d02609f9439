//! End-user tokens: the input read as a JWKS document, as a token (peeked, then verified
//! against a fixed key set, as a waypoint does), and as a RequestAuthentication spec.
#![no_main]

use std::sync::LazyLock;

use weft_mesh::policy::{
    jwt::{self, KeySet},
    request_auth::{self, RequestAuthenticationSpec},
};

/// One P-256 public key (its private half was discarded).
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"rWT_r3fsaZfpXEAKrClC-II-91SE5ci5BFFEkqa9dfQ","y":"z_dXupa45So7zCLNv0zEkIS9NjICcBS4r71-HAiAVmQ"}]}"#;

static KEYS: LazyLock<KeySet> = LazyLock::new(|| KeySet::parse(JWKS).expect("the fixed key set"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = KeySet::parse(text);
    let _ = jwt::peek(text);
    let _ = jwt::verify(text, &KEYS, "https://issuer.weft.test", &["api".to_owned()]);
    if let Ok(spec) = serde_yaml::from_str::<RequestAuthenticationSpec>(text) {
        let _ = request_auth::compile("demo", "fuzz", spec);
    }
});
