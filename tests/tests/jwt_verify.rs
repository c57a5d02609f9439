//! `RequestAuthentication`'s token check on its own (no root): each algorithm accepted under
//! its key, and each forgery or misfit refused with its reason.

use jsonwebtoken::Algorithm;
use serde_json::json;
use weft_harness::jwt::{claims, jwks, now, unsigned, Signer};
use weft_mesh::policy::jwt::{verify, JwtError, KeySet};

const ISSUER: &str = "https://issuer.weft.test";

fn signers() -> Vec<Signer> {
    [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ]
    .into_iter()
    .map(|(alg, kid)| Signer::new(alg, kid).expect("test key"))
    .collect()
}

fn key_set(signers: &[Signer]) -> KeySet {
    KeySet::parse(&jwks(&signers.iter().collect::<Vec<_>>())).expect("key set")
}

#[test]
fn a_valid_token_of_each_algorithm_is_accepted() {
    let signers = signers();
    let keys = key_set(&signers);
    assert_eq!(keys.len(), 3);
    for signer in &signers {
        let token = signer.sign(&claims(ISSUER, "alice", "api"));
        let user = verify(&token, &keys, ISSUER, &["api".into()])
            .unwrap_or_else(|e| panic!("{:?}: {e}", signer.algorithm));
        assert_eq!(user.principal, format!("{ISSUER}/alice"));
        assert_eq!(user.audiences, ["api"]);
    }
}

#[test]
fn forgeries_and_misfits_are_refused_with_their_reason() {
    let signers = signers();
    let keys = key_set(&signers);
    let ec = &signers[1];
    let audiences = ["api".to_owned()];
    let check = |token: &str| {
        verify(token, &keys, ISSUER, &audiences)
            .map(|_| ())
            .map_err(|e| e.reason())
    };
    let mut expired = claims(ISSUER, "alice", "api");
    expired["exp"] = json!(now() - 3600);
    assert_eq!(check(&ec.sign(&expired)), Err("jwt_expired"));
    let mut early = claims(ISSUER, "alice", "api");
    early["nbf"] = json!(now() + 3600);
    assert_eq!(check(&ec.sign(&early)), Err("jwt_not_yet_valid"));
    let wrong_issuer = ec.sign(&claims("https://evil.test", "alice", "api"));
    assert_eq!(
        verify(&wrong_issuer, &keys, ISSUER, &audiences).map(|_| ()),
        Err(JwtError::WrongIssuer("https://evil.test".into()))
    );
    assert_eq!(
        check(&ec.sign(&claims(ISSUER, "alice", "web"))),
        Err("jwt_wrong_audience")
    );
    // Signed by a key that is not in the set, under a kid that is.
    let stranger = Signer::new(Algorithm::ES256, "ec-1").expect("key");
    assert_eq!(
        check(&stranger.sign(&claims(ISSUER, "alice", "api"))),
        Err("jwt_bad_signature")
    );
    // A signature cut from another token.
    let good = ec.sign(&claims(ISSUER, "alice", "api"));
    let other = ec.sign(&claims(ISSUER, "mallory", "api"));
    let spliced = format!(
        "{}.{}",
        other.rsplit_once('.').expect("parts").0,
        good.rsplit_once('.').expect("parts").1
    );
    assert_eq!(check(&spliced), Err("jwt_bad_signature"));
    assert_eq!(
        check(&unsigned(&claims(ISSUER, "alice", "api"))),
        Err("jwt_algorithm_refused")
    );
    for signer in &signers {
        assert_eq!(
            check(&signer.forge_hs256(&claims(ISSUER, "alice", "api"))),
            Err("jwt_algorithm_refused"),
            "HS256 keyed with the {:?} public key",
            signer.algorithm
        );
    }
    assert_eq!(
        check(&ec.sign_as("ec-9", &claims(ISSUER, "alice", "api"))),
        Err("jwt_unknown_key")
    );
    assert_eq!(check("not a token"), Err("jwt_malformed"));
    assert_eq!(check(&"a".repeat(10_000)), Err("jwt_malformed"));
}

#[test]
fn key_sets_refuse_symmetric_keys_and_bound_their_size() {
    let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}).to_string();
    let error = KeySet::parse(&oct).expect_err("oct only").to_string();
    assert!(error.contains("symmetric"), "{error}");
    let many = json!({"keys": vec![json!({"kty": "oct", "k": "c2VjcmV0"}); 40]}).to_string();
    assert!(KeySet::parse(&many)
        .expect_err("too many")
        .to_string()
        .contains("above"));
    assert!(KeySet::parse("{}").is_err());
    // An unusable key beside a good one is skipped and said.
    let signers = signers();
    let mixed = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, signers[2].jwk()]}).to_string();
    let keys = KeySet::parse(&mixed).expect("one usable key");
    assert_eq!((keys.len(), keys.skipped.len()), (1, 1));
}
