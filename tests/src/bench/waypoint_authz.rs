//! The authorization scenario of the waypoint bench: what L7 policy and JWT verification cost
//! per request on `demo/guarded`, at 500 requests a second over 8 connections, under three
//! configurations in turn: no policy; eleven AuthorizationPolicies (ten DENY policies whose
//! paths, headers and claims the requests never match, so each is judged in full, and one
//! ALLOW); and those with a RequestAuthentication verifying an ES256 token on every request
//! (taken from `access_token`) and a DENY that requires it. Compared with no policy, measured in
//! the same run.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::{
    jwt::{claims, jwks, Signer},
    load::LoadReport,
    waypoint_mesh::{Mesh, GUARDED},
};

const ISSUER: &str = "https://bench.weft.test";

/// One configuration's run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthzCase {
    pub config: String,
    pub load: LoadReport,
}

fn policies() -> String {
    let mut yaml = String::new();
    for i in 0..10 {
        let _ = write!(
            yaml,
            "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: bench-deny-{i}, namespace: demo}}\nspec:\n  targetRefs: [{{kind: Service, name: guarded}}]\n  action: DENY\n  rules:\n  - to: [{{operation: {{methods: [DELETE], paths: [\"/admin-{i}*\"]}}}}]\n  - when: [{{key: \"request.headers[x-block-{i}]\", values: [\"*\"]}}]\n  - when: [{{key: \"request.auth.claims[org][team]\", values: [blocked-{i}]}}]\n---\n"
        );
    }
    yaml.push_str("apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bench-allow, namespace: demo}\nspec:\n  targetRefs: [{kind: Service, name: guarded}]\n  rules: [{to: [{operation: {methods: [GET], paths: [\"/*\"]}}], from: [{source: {namespaces: [demo]}}]}]\n");
    yaml
}

/// Runs the three configurations on `mesh`'s `demo/guarded`.
pub fn run(mesh: &Mesh, (seconds, warmup): (f64, f64)) -> anyhow::Result<Vec<AuthzCase>> {
    let client = mesh.pod("client");
    let target = SocketAddr::new(GUARDED.into(), 80);
    let signer = Signer::new(Algorithm::ES256, "bench-1")?;
    let mut token_claims = claims(ISSUER, "bench", "guarded");
    token_claims["exp"] = serde_json::json!(crate::jwt::now() + 86_400);
    let token = signer.sign(&token_claims);
    let request_auth = format!(
        "---\napiVersion: weft.io/v1alpha1\nkind: RequestAuthentication\nmetadata: {{name: bench-jwt, namespace: demo}}\nspec:\n  targetRefs: [{{kind: Service, name: guarded}}]\n  jwtRules: [{{issuer: \"{ISSUER}\", jwks: '{}'}}]\n---\napiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: bench-require-token, namespace: demo}}\nspec:\n  targetRefs: [{{kind: Service, name: guarded}}]\n  action: DENY\n  rules: [{{from: [{{source: {{notRequestPrincipals: [\"*\"]}}}}]}}]\n",
        jwks(&[&signer])
    );
    let with_token = format!("/?access_token={token}");
    let configs: [(&str, String, &str); 3] = [
        ("no policy", String::new(), "/"),
        ("11 L7 policies", policies(), "/"),
        (
            "11 L7 policies + JWT",
            format!("{}{request_auth}", policies()),
            &with_token,
        ),
    ];
    let mut cases = Vec::new();
    for (config, yaml, path) in configs {
        mesh.manifests.write("authz.yaml", &yaml)?;
        // The waypoint reads the folder within a few hundred milliseconds.
        std::thread::sleep(Duration::from_secs(1));
        let load = super::waypoint::load(
            mesh,
            &client,
            (target, path),
            false,
            (500.0, 8, seconds, warmup),
        )?;
        anyhow::ensure!(
            load.errors == 0,
            "waypoint bench: authz, {config}: {} requests failed (a policy or the token refused them)",
            load.errors
        );
        eprintln!(
            "waypoint bench: authz, {config}: p50 {:.0} µs, p99 {:.0} µs",
            load.latency_us.p50, load.latency_us.p99
        );
        cases.push(AuthzCase {
            config: config.to_owned(),
            load,
        });
    }
    mesh.manifests.write("authz.yaml", "")?;
    Ok(cases)
}

/// Each configuration's latency against no policy.
pub fn rows(cases: &[AuthzCase]) -> Vec<super::Row> {
    let section = "waypoint authorization (500 rps, 8 connections)";
    let Some(none) = cases.first() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for case in &cases[1..] {
        for (name, baseline, weft) in [
            ("p50", none.load.latency_us.p50, case.load.latency_us.p50),
            ("p99", none.load.latency_us.p99, case.load.latency_us.p99),
        ] {
            rows.push(super::Row::lower(
                section,
                &format!("{name} with {} (baseline: no policy)", case.config),
                baseline,
                weft,
                "µs",
            ));
        }
    }
    rows
}
