//! L7 authorization and end-user authentication at the waypoint, on the real kernel with curl
//! and gRPC: every operation field and its `not` form and every `when` key deciding a real
//! request, DENY over ALLOW, JWTs of each algorithm accepted and each forgery refused, key
//! rotation (inline and by `jwksUri`), claims passed to the backend, and a pod that admits
//! only its waypoint refusing everyone else at its node agent.

use std::{fmt::Write as _, path::Path, time::Duration};

use jsonwebtoken::Algorithm;
use serde_json::json;
use weft_harness::{
    eventually,
    jwt::{claims, jwks, now, unsigned, Signer},
    require_privileges,
    waypoint_mesh::{Mesh, GUARDED},
};

const ISSUER: &str = "https://issuer.weft.test";

fn start() -> Mesh {
    let bins = Path::new(env!("CARGO_BIN_EXE_weft-testpod"))
        .parent()
        .expect("the target folder");
    Mesh::start(bins, Path::new(env!("CARGO_TARGET_TMPDIR"))).expect("the waypoint mesh")
}

/// Writes `yaml` as `file` and waits until the waypoint's registry holds every `names`.
fn apply(mesh: &Mesh, file: &str, yaml: &str, names: &[&str]) {
    mesh.manifests.write(file, yaml).expect("write");
    eventually(
        Duration::from_secs(10),
        "the waypoint has the objects",
        || {
            let dump = mesh.waypoint_admin("/config_dump");
            names
                .iter()
                .all(|n| dump.contains(&format!("\"name\":\"{n}\"")))
        },
    );
}

fn authorization_policy(name: &str, target: &str, spec: &str) -> String {
    format!(
        "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  targetRefs: [{{kind: Service, name: {target}}}]\n{spec}"
    )
}

/// One request: method, path, headers.
struct Call {
    method: &'static str,
    path: String,
    headers: Vec<String>,
}

fn call(method: &'static str, path: &str, headers: &[&str]) -> Call {
    Call {
        method,
        path: path.into(),
        headers: headers.iter().map(|h| (*h).to_owned()).collect(),
    }
}

/// Sends every call to `demo/guarded` from demo/client in one curl run; each answer is its
/// status and the waypoint's reason header.
fn send(mesh: &Mesh, calls: &[Call]) -> Vec<(u16, String)> {
    let mut config = String::new();
    for (i, c) in calls.iter().enumerate() {
        if i > 0 {
            config.push_str("next\n");
        }
        let _ = writeln!(
            config,
            "url = \"http://{GUARDED}{}\"\nrequest = \"{}\"\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}} %header{{x-weft-reason}}\\n\"",
            c.path, c.method
        );
        for h in &c.headers {
            let _ = writeln!(config, "header = \"{h}\"");
        }
    }
    let file = mesh.logs.join(format!(
        "curl-{}.conf",
        std::process::id() ^ u32::try_from(now() & 0xffff).unwrap_or(0)
    ));
    std::fs::write(&file, config).expect("curl config");
    let out = mesh.curl(&["-K", file.to_str().expect("path")]);
    let answers: Vec<(u16, String)> = out
        .lines()
        .filter_map(|line| {
            let (status, reason) = line.split_once(' ').unwrap_or((line, ""));
            Some((
                status.parse().ok()?,
                if reason.is_empty() {
                    "-".into()
                } else {
                    reason.to_owned()
                },
            ))
        })
        .collect();
    assert_eq!(
        answers.len(),
        calls.len(),
        "curl answered every call: {out}"
    );
    answers
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: its table of cases, each a call denied and a call let through"
)]
fn every_operation_field_and_when_key_decides_at_the_waypoint() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let signer = Signer::new(Algorithm::ES256, "ec-1").expect("key");
    let auth = request_authentication("ra-guarded", &jwks(&[&signer]), "");
    // One DENY policy per case, each only for requests carrying its `x-case`, beside an
    // ALLOW policy that admits everything but /forbidden: a DENY that matches wins over it.
    let cases: &[(&str, &str)] = &[
        ("methods", "to: [{operation: {methods: [DELETE]}}]"),
        ("not-methods", "to: [{operation: {notMethods: [GET]}}]"),
        ("paths", "to: [{operation: {paths: [\"/admin*\"]}}]"),
        ("not-paths", "to: [{operation: {notPaths: [\"/status*\"]}}]"),
        ("hosts", "to: [{operation: {hosts: [\"evil.*\"]}}]"),
        (
            "not-hosts",
            &format!("to: [{{operation: {{notHosts: [\"{GUARDED}\"]}}}}]"),
        ),
        ("ports", "to: [{operation: {ports: [\"80\"], paths: [/p]}}]"),
        ("not-ports", "to: [{operation: {notPorts: [\"80\"]}}]"),
        (
            "header",
            "when: [{key: \"request.headers[x-flag]\", values: [on]}]",
        ),
        (
            "not-header",
            "when: [{key: \"request.headers[x-flag]\", notValues: [on]}]",
        ),
        (
            "source-ip",
            "when: [{key: source.ip, values: [10.0.0.0/8]}]",
        ),
        (
            "source-ip-miss",
            "when: [{key: source.ip, values: [192.0.2.0/24]}]",
        ),
        (
            "source-ns",
            "when: [{key: source.namespace, values: [demo]}]",
        ),
        (
            "source-ns-miss",
            "when: [{key: source.namespace, notValues: [demo]}]",
        ),
        (
            "source-principal",
            "when: [{key: source.principal, values: [\"*/ns/demo/sa/client\"]}]",
        ),
        (
            "source-principal-miss",
            "when: [{key: source.principal, values: [\"*/sa/other\"]}]",
        ),
        (
            "auth-principal",
            &format!("when: [{{key: request.auth.principal, values: [\"{ISSUER}/alice\"]}}]"),
        ),
        (
            "auth-audiences",
            "when: [{key: request.auth.audiences, values: [admin-api]}]",
        ),
        (
            "auth-claims",
            "when: [{key: \"request.auth.claims[groups]\", values: [ops]}]",
        ),
        (
            "auth-nested",
            "when: [{key: \"request.auth.claims[org][team]\", values: [payments]}]",
        ),
        (
            "request-principals",
            "from: [{source: {requestPrincipals: [\"*/alice\"]}}]",
        ),
        (
            "no-token",
            "from: [{source: {notRequestPrincipals: [\"*\"]}}]",
        ),
    ];
    let mut yaml = vec![
        authorization_policy(
            "allow-most",
            "guarded",
            "  rules: [{to: [{operation: {notPaths: [/forbidden]}}]}]\n",
        ),
        auth,
    ];
    let mut names = vec!["allow-most", "ra-guarded"];
    for (case, clause) in cases {
        yaml.push(authorization_policy(
            &format!("deny-{case}"),
            "guarded",
            &deny_case(case, clause),
        ));
    }
    let owned: Vec<String> = cases.iter().map(|(c, _)| format!("deny-{c}")).collect();
    names.extend(owned.iter().map(String::as_str));
    apply(&mesh, "authz.yaml", &yaml.join("---\n"), &names);
    let token = |sub: &str, extra: serde_json::Value| {
        let mut c = claims(ISSUER, sub, "api");
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        format!("authorization: Bearer {}", signer.sign(&c))
    };
    let alice = token("alice", json!({}));
    let bob = token("bob", json!({}));
    let admin = {
        let mut c = claims(ISSUER, "carol", "admin-api");
        c["groups"] = json!(["dev", "ops"]);
        c["org"] = json!({"team": "payments"});
        format!("authorization: Bearer {}", signer.sign(&c))
    };
    // (case, the call it denies, a call it lets through)
    let h = |case: &str| format!("x-case: {case}");
    let table: Vec<(&str, Call, Call)> = vec![
        (
            "methods",
            call("DELETE", "/status/200", &[]),
            call("GET", "/status/200", &[]),
        ),
        (
            "not-methods",
            call("POST", "/status/200", &[]),
            call("GET", "/status/200", &[]),
        ),
        (
            "paths",
            call("GET", "/admin/users", &[]),
            call("GET", "/status/200", &[]),
        ),
        (
            "not-paths",
            call("GET", "/other", &[]),
            call("GET", "/status/200", &[]),
        ),
        (
            "hosts",
            call("GET", "/", &["host: evil.example"]),
            call("GET", "/", &[]),
        ),
        (
            "not-hosts",
            call("GET", "/", &["host: other.example"]),
            call("GET", "/", &[]),
        ),
        ("ports", call("GET", "/p", &[]), call("GET", "/q", &[])),
        (
            "header",
            call("GET", "/", &["x-flag: on"]),
            call("GET", "/", &["x-flag: off"]),
        ),
        (
            "not-header",
            call("GET", "/", &["x-flag: off"]),
            call("GET", "/", &["x-flag: on"]),
        ),
        (
            "source-ip",
            call("GET", "/", &[]),
            call("GET", "/", &["x-case: source-ip-miss"]),
        ),
        (
            "source-ns",
            call("GET", "/", &[]),
            call("GET", "/", &["x-case: source-ns-miss"]),
        ),
        (
            "source-principal",
            call("GET", "/", &[]),
            call("GET", "/", &["x-case: source-principal-miss"]),
        ),
        (
            "auth-principal",
            call("GET", "/", &[&alice]),
            call("GET", "/", &[&bob]),
        ),
        (
            "auth-audiences",
            call("GET", "/", &[&admin]),
            call("GET", "/", &[&alice]),
        ),
        (
            "auth-claims",
            call("GET", "/", &[&admin]),
            call("GET", "/", &[&alice]),
        ),
        (
            "auth-nested",
            call("GET", "/", &[&admin]),
            call("GET", "/", &[&alice]),
        ),
        (
            "request-principals",
            call("GET", "/", &[&alice]),
            call("GET", "/", &[&bob]),
        ),
        (
            "no-token",
            call("GET", "/", &[]),
            call("GET", "/", &[&alice]),
        ),
    ];
    let mut calls = Vec::new();
    for (case, mut denied, mut passed) in table {
        denied.headers.push(h(case));
        if !passed.headers.iter().any(|x| x.starts_with("x-case")) {
            passed.headers.push(h(case));
        }
        calls.push(denied);
        calls.push(passed);
    }
    // notPorts 80 never matches a request to port 80.
    calls.push(call("GET", "/", &["x-case: not-ports"]));
    // The ALLOW policy: what none of its rules admits is refused.
    calls.push(call("GET", "/forbidden", &[]));
    let answers = send(&mesh, &calls);
    let mut failures = Vec::new();
    for (i, pair) in answers.chunks(2).take(answers.len() / 2 - 1).enumerate() {
        let case = calls[i * 2].headers.last().cloned().unwrap_or_default();
        if pair[0] != (403, "denied_by_policy".into()) || pair[1].0 != 200 {
            failures.push(format!(
                "{case}: denied call {:?}, passed call {:?}",
                pair[0], pair[1]
            ));
        }
    }
    let tail = &answers[answers.len() - 2..];
    if tail[0].0 != 200 {
        failures.push(format!("not-ports: {:?}", tail[0]));
    }
    if tail[1] != (403, "no_allow_rule_matched".into()) {
        failures.push(format!("/forbidden: {:?}", tail[1]));
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\nwaypoint log:\n{}",
        mesh.waypoint_log()
    );
    // A denial names its policy and rule, in the body and in the request record.
    let body = mesh.curl(&["-H", "x-case: paths", &format!("http://{GUARDED}/admin")]);
    assert!(
        body.contains("RBAC: access denied: denied by demo/deny-paths rule 0"),
        "{body}"
    );
    let (ok, out) = mesh.weftctl(&["requests", "--status", "403", "-o", "json"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"policy\": \"demo/deny-paths\"") && out.contains("\"verdict\": \"deny\""),
        "{out}"
    );
    // route-check says which policy would decide, for a caller, without sending anything.
    let (ok, explained) = mesh.weftctl(&[
        "route-check",
        "POST",
        &format!("http://{GUARDED}/admin"),
        "-H",
        "x-case: paths",
        "--caller",
        "demo/client",
    ]);
    assert!(ok, "{explained}");
    assert!(
        explained.contains(
            "authorization: deny (403 denied_by_policy): denied by demo/deny-paths rule 0"
        ),
        "{explained}"
    );
    let (_, allowed) = mesh.weftctl(&[
        "route-check",
        "GET",
        &format!("http://{GUARDED}/"),
        "--caller",
        "demo/client",
    ]);
    assert!(
        allowed.contains(
            "authorization: allow (200 allowed_by_policy): allowed by demo/allow-most rule 0"
        ),
        "{allowed}"
    );
    // The node agent says where each policy is enforced.
    let node = mesh.cluster.node("node0").clone();
    let policies = mesh.cluster.admin(&node, "/policies").expect("policies");
    let deny_paths = policies
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "deny-paths")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        deny_paths["enforcedAt"],
        json!(["waypoint demo/waypoint", "agent"]),
        "{policies}"
    );
    let metrics = mesh.waypoint_admin_at(15020, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"denied_by_policy\"") && l.contains("verdict=\"deny\"")),
        "{metrics}"
    );
}

/// A DENY policy spec whose one rule is `clause` (`to: …`, `from: …` or `when: …`) and, so
/// that cases do not meet, a request header `x-case: <case>`.
fn deny_case(case: &str, clause: &str) -> String {
    let only_case = format!("{{key: \"request.headers[x-case]\", values: [{case}]}}");
    let rule = match clause.strip_prefix("when: [") {
        Some(rest) => format!("when: [{only_case}, {rest}"),
        None => format!("{clause}, when: [{only_case}]"),
    };
    format!("  action: DENY\n  rules: [{{{rule}}}]\n")
}

/// `RequestAuthentication` `name` for Service guarded, trusting `jwks` for [`ISSUER`], with
/// `extra_rules` (YAML list items) after its first rule.
fn request_authentication(name: &str, jwks: &str, extra_rules: &str) -> String {
    format!(
        "apiVersion: weft.io/v1alpha1\nkind: RequestAuthentication\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  targetRefs: [{{kind: Service, name: guarded}}]\n  jwtRules:\n  - issuer: {ISSUER}\n    audiences: [api, admin-api]\n    jwks: '{jwks}'\n    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}, {{header: x-jwt-team, claim: org.team}}]\n{extra_rules}"
    )
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario in order: accepted, refused, passed on, then rotated"
)]
fn tokens_are_verified_refused_and_rotated_at_the_waypoint() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let signers: Vec<Signer> = [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ]
    .into_iter()
    .map(|(a, k)| Signer::new(a, k).expect("key"))
    .collect();
    // A second issuer whose keys the waypoint fetches from a server in the mesh.
    let served = mesh.logs.join("jwks-served");
    std::fs::create_dir_all(&served).expect("dir");
    let uri_key = Signer::new(Algorithm::ES256, "uri-1").expect("key");
    std::fs::write(served.join("jwks.json"), jwks(&[&uri_key])).expect("jwks");
    mesh.cluster
        .spawn_in_pod(
            &mesh.pod("mirror"),
            "python3",
            &[
                "-m",
                "http.server",
                "8081",
                "--bind",
                "0.0.0.0",
                "--directory",
                served.to_str().expect("path"),
            ],
        )
        .expect("jwks server");
    let mirror_ip = mesh.pod("mirror").ip;
    let uri_rule = format!(
        "  - issuer: https://uri.weft.test\n    jwksUri: http://{mirror_ip}:8081/jwks.json\n"
    );
    let all: Vec<&Signer> = signers.iter().collect();
    let require_token = authorization_policy(
        "require-token",
        "guarded",
        "  action: DENY\n  rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}], to: [{operation: {paths: [\"/private*\"]}}]}]\n",
    );
    apply(
        &mesh,
        "authn.yaml",
        &[
            request_authentication("ra-guarded", &jwks(&all), &uri_rule),
            require_token,
        ]
        .join("---\n"),
        &["ra-guarded", "require-token"],
    );
    let bearer = |token: &str| format!("authorization: Bearer {token}");
    let mut good = claims(ISSUER, "alice", "api");
    good["org"] = json!({"team": "payments"});
    let mut calls: Vec<Call> = signers
        .iter()
        .map(|s| call("GET", "/private", &[&bearer(&s.sign(&good))]))
        .collect();
    let ec = &signers[1];
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    let mut early = good.clone();
    early["nbf"] = json!(now() + 3600);
    let stranger = Signer::new(Algorithm::ES256, "ec-1").expect("key");
    let refused = [
        (ec.sign(&expired), "jwt_expired"),
        (ec.sign(&early), "jwt_not_yet_valid"),
        (
            ec.sign(&claims("https://evil.test", "alice", "api")),
            "jwt_wrong_issuer",
        ),
        (
            ec.sign(&claims(ISSUER, "alice", "web")),
            "jwt_wrong_audience",
        ),
        (stranger.sign(&good), "jwt_bad_signature"),
        (unsigned(&good), "jwt_algorithm_refused"),
        (signers[0].forge_hs256(&good), "jwt_algorithm_refused"),
        (ec.sign_as("ec-9", &good), "jwt_unknown_key"),
    ];
    calls.extend(refused.iter().map(|(t, _)| call("GET", "/", &[&bearer(t)])));
    // No token: passes where nothing requires one, refused where a policy does.
    calls.push(call("GET", "/", &[]));
    calls.push(call("GET", "/private", &[]));
    // From the query, the default second place to look.
    calls.push(call(
        "GET",
        &format!("/private?access_token={}", ec.sign(&good)),
        &[],
    ));
    let answers = send(&mesh, &calls);
    for (i, s) in signers.iter().enumerate() {
        assert_eq!(
            answers[i].0,
            200,
            "{:?} token: {:?}\n{}",
            s.algorithm,
            answers[i],
            mesh.waypoint_log()
        );
    }
    for (j, (_, reason)) in refused.iter().enumerate() {
        assert_eq!(
            answers[signers.len() + j],
            (401, (*reason).to_owned()),
            "refusal {j}"
        );
    }
    let n = signers.len() + refused.len();
    assert_eq!(answers[n].0, 200, "no token, nothing requires one");
    assert_eq!(
        answers[n + 1],
        (403, "denied_by_policy".into()),
        "no token where one is required"
    );
    assert_eq!(answers[n + 2].0, 200, "the token from access_token");
    // The backend sees the claims the rule copies, and not the token.
    let echoed = mesh.curl(&[
        "-H",
        &bearer(&ec.sign(&good)),
        &format!("http://{GUARDED}/"),
    ]);
    assert!(
        echoed.contains("header x-jwt-sub: alice")
            && echoed.contains("header x-jwt-team: payments"),
        "{echoed}"
    );
    assert!(
        !echoed.contains("header authorization"),
        "the token was forwarded: {echoed}"
    );
    // A token from the fetched set, then a rotation of that set: the new key's tokens pass
    // once the waypoint fetches again (a kid it lacks makes it look).
    let uri_claims = claims("https://uri.weft.test", "dave", "any");
    // The key server in the pod may still be starting: the waypoint keeps asking (at most
    // every 2 s) while it answers `jwks_unavailable`.
    let mut last = (0, String::new());
    eventually(
        Duration::from_secs(15),
        "the jwksUri key is accepted",
        || {
            last = send(
                &mesh,
                &[call("GET", "/", &[&bearer(&uri_key.sign(&uri_claims))])],
            )[0]
            .clone();
            assert!(
                last.0 == 200 || last == (401, "jwks_unavailable".into()),
                "{last:?}"
            );
            last.0 == 200
        },
    );
    // The key set came over the mesh: the key server's agent saw an mTLS connection from the
    // waypoint's identity to port 8081.
    let node = mesh.cluster.node(&mesh.pod("mirror").node).clone();
    let flows = mesh.cluster.admin(&node, "/flows").expect("flows");
    assert!(
        flows.as_array().into_iter().flatten().any(|f| {
            f["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(":8081"))
                && f["peerIdentity"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/ns/demo/sa/waypoint"))
                && f["security"] == "mtls"
        }),
        "no mTLS flow from the waypoint to the key server: {flows}"
    );
    let rotated = Signer::new(Algorithm::EdDSA, "uri-2").expect("key");
    std::fs::write(served.join("jwks.json"), jwks(&[&rotated])).expect("rotate");
    eventually(
        Duration::from_secs(15),
        "the rotated jwksUri key is accepted",
        || {
            send(
                &mesh,
                &[call("GET", "/", &[&bearer(&rotated.sign(&uri_claims))])],
            )[0]
            .0 == 200
        },
    );
    // Inline rotation: the manifest's set replaced; the old key's tokens no longer pass.
    let next = Signer::new(Algorithm::ES256, "ec-2").expect("key");
    apply(
        &mesh,
        "authn.yaml",
        &request_authentication("ra-rotated", &jwks(&[&next]), ""),
        &["ra-rotated"],
    );
    let after = send(
        &mesh,
        &[
            call("GET", "/", &[&bearer(&next.sign(&good))]),
            call("GET", "/", &[&bearer(&ec.sign(&good))]),
        ],
    );
    assert_eq!(after[0].0, 200, "the new inline key");
    assert_eq!(
        after[1],
        (401, "jwt_unknown_key".into()),
        "the old inline key"
    );
}

#[test]
fn grpc_calls_are_denied_with_permission_denied() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    mesh.start_grpc_echo().expect("grpc server");
    apply(
        &mesh,
        "authz.yaml",
        &authorization_policy(
            "deny-chaos",
            "grpc",
            "  action: DENY\n  rules: [{when: [{key: \"request.headers[x-chaos]\", values: [\"1\"]}]}]\n",
        ),
        &["deny-chaos"],
    );
    let seen = mesh.grpc_chaos();
    assert_eq!(seen["chaos_code"], "PERMISSION_DENIED", "{seen}");
    assert!(
        seen["chaos_details"]
            .as_str()
            .is_some_and(|d| d.contains("demo/deny-chaos rule 0")),
        "{seen}"
    );
    assert_eq!(seen["calm_code"], "OK", "{seen}");
}

#[test]
fn a_pod_that_admits_only_its_waypoint_refuses_direct_connections() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let only_waypoint = "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: only-waypoint\n  namespace: demo\nspec:\n  selector: {matchLabels: {app: guarded}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/waypoint]}}]}]\n";
    apply(&mesh, "authz.yaml", only_waypoint, &["only-waypoint"]);
    // Through the waypoint: admitted.
    eventually(
        Duration::from_secs(10),
        "the Service answers through its waypoint",
        || send(&mesh, &[call("GET", "/", &[])])[0].0 == 200,
    );
    // Straight to the pod, from a mesh workload and from outside the mesh: refused.
    let echo_v3 = mesh.pod("echo-v3").ip;
    let direct = mesh
        .cluster
        .run_in_pod(
            &mesh.pod("client"),
            "curl",
            &[
                "-s",
                "--max-time",
                "3",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{echo_v3}:8080/"),
            ],
        )
        .expect("curl");
    assert_ne!(
        String::from_utf8_lossy(&direct.stdout),
        "200",
        "a mesh workload reached the pod directly"
    );
    let plain = mesh
        .cluster
        .run_in_pod(
            &mesh.plain_pod("plain-client"),
            "curl",
            &[
                "-s",
                "--max-time",
                "3",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{echo_v3}:8080/"),
            ],
        )
        .expect("curl");
    assert_ne!(
        String::from_utf8_lossy(&plain.stdout),
        "200",
        "a plaintext client reached the pod"
    );
    // The destination agent says why, for both.
    let node = mesh.cluster.node("node0").clone();
    let mut flows = String::new();
    eventually(
        Duration::from_secs(10),
        "the agent recorded both refusals",
        || {
            flows = mesh
                .cluster
                .admin(&node, "/flows")
                .map(|v| v.to_string())
                .unwrap_or_default();
            flows.matches("no_allow_rule_matched").count() >= 2
        },
    );
    assert!(flows.contains("demo/only-waypoint"), "{flows}");
    let policies = mesh.cluster.admin(&node, "/policies").expect("policies");
    assert_eq!(policies[0]["enforcedAt"], json!(["agent"]), "{policies}");
}
