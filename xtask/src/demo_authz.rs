//! The tour's L7 authorization part, at the waypoint, on `demo/echo`: a policy that admits
//! only `GET` and another that denies `POST /admin`, seen with curl, `weftctl … requests
//! --status 403` and `route-check`; then a `RequestAuthentication` with a key the tour mints,
//! and a path that requires a token, tried without one, with one and with an expired one.
//! Leaves no policy behind.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use weft_harness::{jwt, manifests::Manifests, Cluster};

use crate::{
    demo,
    demo_waypoint::{curl, weftctl_waypoint},
};

const ISSUER: &str = "https://issuer.demo.weft";

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  targetRefs: [{{kind: Service, name: echo}}]\n{spec}"
    )
}

fn apply(manifests: &Manifests, docs: &[String]) -> anyhow::Result<()> {
    for doc in docs {
        println!("  {}", doc.replace('\n', "\n  ").trim_end());
        println!("  ---");
    }
    manifests.write("authz.yaml", &docs.join("---\n"))?;
    // The waypoint reads the folder within a few hundred milliseconds.
    std::thread::sleep(Duration::from_millis(800));
    Ok(())
}

/// curl's status line and the waypoint's reason for one request.
fn show(cluster: &Cluster, label: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec![
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %header{x-weft-reason}",
    ];
    full.extend_from_slice(args);
    let out = curl(cluster, &full)?;
    let (status, reason) = out.split_once(' ').unwrap_or((&out, ""));
    println!(
        "  {label:<44} -> {status} {}",
        if reason.is_empty() { "" } else { reason }
    );
    Ok(())
}

/// The L7 authorization tour; `demo/echo` must use the waypoint with no route.
pub fn tour(cluster: &Cluster, manifests: &Manifests) -> anyhow::Result<()> {
    let base = format!("http://{}", demo::ECHO_VIP);
    demo::banner("L7 authorization: demo/echo admits GET only, and never POST /admin");
    apply(
        manifests,
        &[
            policy("echo-reads", "  rules: [{to: [{operation: {methods: [GET]}}]}]\n"),
            policy(
                "echo-no-admin",
                "  action: DENY\n  rules: [{to: [{operation: {methods: [POST], paths: [\"/admin*\"]}}]}]\n",
            ),
        ],
    )?;
    show(cluster, "curl GET /", &[&format!("{base}/")])?;
    show(
        cluster,
        "curl -X POST /data",
        &["-X", "POST", &format!("{base}/data")],
    )?;
    show(
        cluster,
        "curl -X POST /admin",
        &["-X", "POST", &format!("{base}/admin")],
    )?;
    let body = curl(cluster, &["-X", "POST", &format!("{base}/admin")])?;
    println!("  the waypoint's answer: {}", body.trim());
    demo::banner("weftctl --waypoint demo/waypoint requests --status 403");
    weftctl_waypoint(&["requests", "--status", "403"])?;
    demo::banner("weftctl --waypoint demo/waypoint route-check POST http://10.96.0.10/admin --caller demo/client");
    weftctl_waypoint(&[
        "route-check",
        "POST",
        &format!("{base}/admin"),
        "--caller",
        "demo/client",
    ])?;
    demo::banner("weftctl --node node-a policies: where each policy is enforced");
    demo::weftctl(&["--node", "node-a", "policies"])?;

    demo::banner("End-user JWTs: a RequestAuthentication trusts a key the tour mints, and /private requires a token");
    let signer = jwt::Signer::new(Algorithm::ES256, "demo-1")?;
    let key_set = jwt::jwks(&[&signer]);
    apply(
        manifests,
        &[
            format!(
                "apiVersion: weft.io/v1alpha1\nkind: RequestAuthentication\nmetadata: {{name: echo-jwt, namespace: demo}}\nspec:\n  targetRefs: [{{kind: Service, name: echo}}]\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{key_set}'\n    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]\n"
            ),
            policy(
                "echo-private-needs-token",
                "  action: DENY\n  rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}], to: [{operation: {paths: [\"/private*\"]}}]}]\n",
            ),
        ],
    )?;
    let token = signer.sign(&jwt::claims(ISSUER, "alice", "echo"));
    let mut expired = jwt::claims(ISSUER, "alice", "echo");
    expired["exp"] = serde_json::json!(jwt::now() - 600);
    let expired = signer.sign(&expired);
    let bearer = |t: &str| format!("authorization: Bearer {t}");
    show(
        cluster,
        "curl /private (no token)",
        &[&format!("{base}/private")],
    )?;
    show(
        cluster,
        "curl /private with alice's token",
        &["-H", &bearer(&token), &format!("{base}/private")],
    )?;
    show(
        cluster,
        "curl /private with an expired token",
        &["-H", &bearer(&expired), &format!("{base}/private")],
    )?;
    let echoed = curl(
        cluster,
        &["-H", &bearer(&token), &format!("{base}/private")],
    )?;
    println!(
        "  the backend saw x-jwt-sub{} (and no authorization header: the token is not forwarded)",
        demo::answer_line(&echoed, "header x-jwt-sub")
    );
    demo::banner("weftctl --waypoint demo/waypoint requests --status 401");
    weftctl_waypoint(&["requests", "--status", "401"])?;
    manifests.write("authz.yaml", "")?;
    Ok(())
}
