//! Policy evaluation, table by table: each L4 field and its not-form, action precedence,
//! audit and dry run, strict mTLS, the L7 fail-closed rule, and validation.
#![expect(
    clippy::disallowed_methods,
    reason = "tests read the checked-in CRDs synchronously"
)]

use super::{compile, crd::AuthorizationPolicySpec, evaluate, Policy, Reason, Request, Verdict};
use crate::identity::SpiffeId;

fn policy(name: &str, yaml: &str) -> Policy {
    let spec: AuthorizationPolicySpec = serde_yaml::from_str(yaml).expect("spec");
    compile("demo", name, spec).expect("valid policy")
}

struct Conn {
    identity: Option<SpiffeId>,
    ip: &'static str,
    port: u16,
    strict: bool,
}

fn from(ns: &str, sa: &str) -> Conn {
    Conn {
        identity: Some(SpiffeId::new("cluster.local", ns, sa)),
        ip: "10.244.1.10",
        port: 9000,
        strict: false,
    }
}

fn plaintext(ip: &'static str) -> Conn {
    Conn {
        identity: None,
        ip,
        port: 9000,
        strict: false,
    }
}

fn decide(policies: &[Policy], conn: &Conn) -> (Verdict, Reason, String) {
    let labels = crate::registry::Labels::from([("app", "server")]);
    let services = vec!["echo".to_owned()];
    let request = Request {
        namespace: "demo",
        labels: &labels,
        services: &services,
        port: conn.port,
        identity: conn.identity.as_ref(),
        source_ip: conn.ip.parse().expect("ip"),
        strict: conn.strict,
        l7: None,
        gateway: None,
        enforced_by_waypoint: &[],
    };
    let d = evaluate(policies, &request);
    (d.verdict, d.reason, d.detail)
}

fn allowed(policies: &[Policy], conn: &Conn) -> bool {
    decide(policies, conn).0 == Verdict::Allow
}

#[test]
fn no_policy_allows_and_says_so() {
    let (verdict, reason, detail) = decide(&[], &from("demo", "client"));
    assert_eq!((verdict, reason), (Verdict::Allow, Reason::NoPolicy));
    assert!(detail.contains("no ALLOW policy"));
}

#[test]
fn principals_exact_prefix_suffix_any_and_not() {
    let p = |principal: &str| {
        [policy(
            "p",
            &format!("rules: [{{from: [{{source: {{principals: [\"{principal}\"]}}}}]}}]"),
        )]
    };
    assert!(allowed(
        &p("cluster.local/ns/demo/sa/client"),
        &from("demo", "client")
    ));
    assert!(!allowed(
        &p("cluster.local/ns/demo/sa/client"),
        &from("demo", "other")
    ));
    assert!(allowed(
        &p("cluster.local/ns/demo/*"),
        &from("demo", "anything")
    ));
    assert!(!allowed(
        &p("cluster.local/ns/demo/*"),
        &from("legacy", "anything")
    ));
    assert!(allowed(&p("*/sa/client"), &from("legacy", "client")));
    assert!(allowed(&p("*"), &from("x", "y")));
    assert!(
        !allowed(&p("*"), &plaintext("10.244.2.11")),
        "principal rules cannot match plaintext"
    );
    let not = [policy(
        "p",
        "rules: [{from: [{source: {notPrincipals: [\"cluster.local/ns/demo/sa/bad\"]}}]}]",
    )];
    assert!(allowed(&not, &from("demo", "good")));
    assert!(!allowed(&not, &from("demo", "bad")));
    assert!(
        allowed(&not, &plaintext("10.244.2.11")),
        "a client without identity is not that principal"
    );
}

#[test]
fn namespaces_ip_blocks_and_ports_with_their_not_forms() {
    let ns = [policy(
        "p",
        "rules: [{from: [{source: {namespaces: [demo]}}]}]",
    )];
    assert!(allowed(&ns, &from("demo", "a")));
    assert!(!allowed(&ns, &from("legacy", "a")));
    let not_ns = [policy(
        "p",
        "rules: [{from: [{source: {notNamespaces: [legacy]}}]}]",
    )];
    assert!(allowed(&not_ns, &from("demo", "a")));
    assert!(!allowed(&not_ns, &from("legacy", "a")));
    let cidr = [policy(
        "p",
        "rules: [{from: [{source: {ipBlocks: [10.244.2.0/24]}}]}]",
    )];
    assert!(allowed(&cidr, &plaintext("10.244.2.11")));
    assert!(!allowed(&cidr, &plaintext("10.244.1.11")));
    let not_cidr = [policy(
        "p",
        "rules: [{from: [{source: {notIpBlocks: [10.244.2.11]}}]}]",
    )];
    assert!(!allowed(&not_cidr, &plaintext("10.244.2.11")));
    assert!(allowed(&not_cidr, &plaintext("10.244.2.12")));
    let port = [policy(
        "p",
        "rules: [{to: [{operation: {ports: [\"9000\"]}}]}]",
    )];
    assert!(allowed(&port, &from("demo", "a")));
    assert!(!allowed(
        &port,
        &Conn {
            port: 8080,
            ..from("demo", "a")
        }
    ));
    let not_port = [policy(
        "p",
        "rules: [{to: [{operation: {notPorts: [\"9000\"]}}]}]",
    )];
    assert!(!allowed(&not_port, &from("demo", "a")));
}

#[test]
fn deny_overrides_allow_and_names_its_policy_and_rule() {
    let policies = [
        policy("allow-all", "rules: [{}]"),
        policy("deny-legacy", "action: DENY\nrules: [{from: [{source: {namespaces: [other]}}]}, {from: [{source: {namespaces: [legacy]}}]}]"),
    ];
    let (verdict, reason, detail) = decide(&policies, &from("legacy", "a"));
    assert_eq!((verdict, reason), (Verdict::Deny, Reason::DeniedByPolicy));
    assert_eq!(detail, "denied by demo/deny-legacy rule 1");
    assert!(allowed(&policies, &from("demo", "a")));
}

#[test]
fn an_allow_policy_that_matches_nothing_denies_with_its_name() {
    let policies = [policy(
        "only-client",
        "rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]",
    )];
    let (verdict, reason, detail) = decide(&policies, &from("demo", "intruder"));
    assert_eq!(
        (verdict, reason),
        (Verdict::Deny, Reason::NoAllowRuleMatched)
    );
    assert!(detail.contains("demo/only-client"), "{detail}");
}

#[test]
fn audit_and_dry_run_never_change_the_verdict() {
    let audit = policy("audit", "action: AUDIT\nrules: [{}]");
    let dry_deny = policy("dry-deny", "action: DENY\ndryRun: true\nrules: [{}]");
    let labels = crate::registry::Labels::default();
    let request = Request {
        namespace: "demo",
        labels: &labels,
        services: &[],
        port: 9000,
        identity: None,
        source_ip: "10.0.0.1".parse().expect("ip"),
        strict: false,
        l7: None,
        gateway: None,
        enforced_by_waypoint: &[],
    };
    let decision = evaluate([&audit, &dry_deny], &request);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert!(
        decision
            .notes
            .iter()
            .any(|n| n == "audited by demo/audit rule 0"),
        "{:?}",
        decision.notes
    );
    assert!(
        decision
            .notes
            .iter()
            .any(|n| n.starts_with("dry run: would be denied by demo/dry-deny")),
        "{:?}",
        decision.notes
    );
}

#[test]
fn strict_mtls_refuses_plaintext_and_permissive_admits_it() {
    let strict = Conn {
        strict: true,
        ..plaintext("10.244.2.11")
    };
    assert_eq!(decide(&[], &strict).1, Reason::StrictMtlsPlaintext);
    assert!(allowed(&[], &plaintext("10.244.2.11")));
    assert!(allowed(
        &[],
        &Conn {
            strict: true,
            ..from("demo", "a")
        }
    ));
}

#[test]
fn an_allow_rule_needing_l7_without_a_waypoint_denies_and_says_so() {
    let policies = [policy(
        "get-only",
        "rules: [{to: [{operation: {methods: [GET]}}]}]",
    )];
    let (verdict, reason, detail) = decide(&policies, &from("demo", "a"));
    assert_eq!(
        (verdict, reason),
        (Verdict::Deny, Reason::L7RequiresWaypoint)
    );
    assert!(detail.contains("no waypoint"), "{detail}");
}

#[test]
fn selectors_and_target_refs_scope_policies() {
    let other = [policy("other-app", "selector: {matchLabels: {app: other}}\nrules: [{from: [{source: {namespaces: [nobody]}}]}]")];
    assert!(
        allowed(&other, &from("demo", "a")),
        "a policy selecting other pods does not apply"
    );
    let service = [policy("svc", "targetRefs: [{kind: Service, name: echo}]\nrules: [{from: [{source: {namespaces: [nobody]}}]}]")];
    assert!(
        !allowed(&service, &from("demo", "a")),
        "the pod backs Service echo"
    );
}

#[test]
fn bad_policies_are_rejected_with_what_to_fix() {
    let empty: AuthorizationPolicySpec = serde_yaml::from_str("rules: []").expect("parses");
    let error = compile("demo", "p", empty).expect_err("empty rules");
    assert!(error.to_string().contains("rules is empty"));
    assert_eq!(error.reason(), "missing_field");
    let bad_cidr: AuthorizationPolicySpec =
        serde_yaml::from_str("rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]")
            .expect("parses");
    let error = compile("demo", "p", bad_cidr).expect_err("bad cidr");
    assert_eq!(
        error.to_string(),
        "rules[0]: ipBlock \"10.0.0.0/40\": prefix length above 32"
    );
    assert_eq!(error.reason(), "bad_ip_block");
    let unknown: Result<AuthorizationPolicySpec, _> = serde_yaml::from_str("rules: [{}]\nbogus: 1");
    assert!(unknown
        .expect_err("unknown field")
        .to_string()
        .contains("bogus"));
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for folder in super::CRD_FOLDERS {
        for (file, generated) in super::crds() {
            let path = root.join(folder).join(file);
            let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                checked_in == generated,
                "{} drifted from the Rust types: run `cargo xtask crds`",
                path.display()
            );
            assert!(generated.contains("group: weft.io") && generated.contains("name: v1alpha1"));
        }
        // A CRD whose type was removed or renamed would otherwise stay checked in and deployed.
        let mut on_disk: Vec<String> = std::fs::read_dir(root.join(folder))
            .unwrap_or_else(|e| panic!("{folder}: {e}"))
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name != "kustomization.yaml")
            .collect();
        on_disk.sort();
        let mut generated: Vec<String> = super::crds()
            .into_iter()
            .map(|(file, _)| file.to_owned())
            .collect();
        generated.sort();
        assert_eq!(
            on_disk, generated,
            "{folder} holds files the Rust types do not generate: remove them or run `cargo xtask crds`"
        );
    }
}

mod l7 {
    //! The waypoint's side of `AuthorizationPolicy`: operations, `when` keys and request
    //! principals judged on a request.

    use std::net::IpAddr;

    use crate::identity::SpiffeId;
    use crate::policy::{compile, evaluate, Attributes, Authenticated, Reason, Request, Verdict};
    use crate::registry::Labels;

    fn policy(yaml: &str) -> crate::policy::Policy {
        let spec = serde_yaml::from_str(yaml).expect("spec");
        compile("demo", "p", spec).expect("compiles")
    }

    struct Call<'a> {
        method: &'a str,
        path: &'a str,
        host: &'a str,
        headers: http::HeaderMap,
        auth: Option<Authenticated>,
        identity: Option<SpiffeId>,
        ip: IpAddr,
        port: u16,
    }

    fn call() -> Call<'static> {
        Call {
            method: "GET",
            path: "/status",
            host: "api.demo:8080",
            headers: http::HeaderMap::new(),
            auth: None,
            identity: Some(SpiffeId::new("cluster.local", "demo", "client")),
            ip: [10, 0, 0, 7].into(),
            port: 8080,
        }
    }

    fn decide(policies: &[crate::policy::Policy], c: &Call<'_>) -> (Verdict, Reason) {
        let labels = Labels::default();
        let services = ["api".to_owned()];
        let request = Request {
            namespace: "demo",
            labels: &labels,
            services: &services,
            port: c.port,
            identity: c.identity.as_ref(),
            source_ip: c.ip,
            strict: false,
            l7: Some(Attributes {
                method: c.method,
                path: c.path,
                host: c.host,
                headers: &c.headers,
                auth: c.auth.as_ref(),
            }),
            gateway: Some("waypoint"),
            enforced_by_waypoint: &[],
        };
        let d = evaluate(policies, &request);
        (d.verdict, d.reason)
    }

    const TARGET: &str = "targetRefs: [{kind: Service, name: api}]\n";

    fn allows(spec: &str, c: &Call<'_>) -> bool {
        decide(&[policy(&format!("{TARGET}{spec}"))], c).0 == Verdict::Allow
    }

    #[test]
    fn operations_and_their_not_forms() {
        let get = call();
        let post = Call {
            method: "POST",
            path: "/admin/users",
            ..call()
        };
        let methods = "rules: [{to: [{operation: {methods: [GET]}}]}]";
        assert!(allows(methods, &get));
        assert!(!allows(methods, &post));
        let not_methods = "rules: [{to: [{operation: {notMethods: [POST]}}]}]";
        assert!(allows(not_methods, &get));
        assert!(!allows(not_methods, &post));
        let paths = "rules: [{to: [{operation: {paths: [/status, \"/api/*\", \"*.css\"]}}]}]";
        assert!(allows(paths, &get));
        assert!(allows(
            paths,
            &Call {
                path: "/api/v1/x",
                ..call()
            }
        ));
        assert!(allows(
            paths,
            &Call {
                path: "/site.css",
                ..call()
            }
        ));
        assert!(!allows(paths, &post));
        let not_paths = "rules: [{to: [{operation: {notPaths: [\"/admin*\"]}}]}]";
        assert!(allows(not_paths, &get));
        assert!(!allows(not_paths, &post));
        // Hosts match without the port and whatever the case.
        let hosts = "rules: [{to: [{operation: {hosts: [\"API.demo\", \"*.example.com\"]}}]}]";
        assert!(allows(hosts, &get));
        assert!(allows(
            hosts,
            &Call {
                host: "x.example.com",
                ..call()
            }
        ));
        assert!(!allows(
            hosts,
            &Call {
                host: "other",
                ..call()
            }
        ));
        let not_hosts = "rules: [{to: [{operation: {notHosts: [api.demo]}}]}]";
        assert!(!allows(not_hosts, &get));
        assert!(allows(
            not_hosts,
            &Call {
                host: "other:80",
                ..call()
            }
        ));
        let ports = "rules: [{to: [{operation: {ports: [\"8080\"], methods: [GET]}}]}]";
        assert!(allows(ports, &get));
        assert!(!allows(
            ports,
            &Call {
                port: 9090,
                ..call()
            }
        ));
        let not_ports = "rules: [{to: [{operation: {notPorts: [\"8080\"]}}]}]";
        assert!(!allows(not_ports, &get));
    }

    fn token(sub: &str) -> Authenticated {
        Authenticated {
            principal: format!("https://issuer.test/{sub}"),
            audiences: vec!["api".into(), "web".into()],
            presenter: Some("frontend".into()),
            claims: serde_json::json!({"iss": "https://issuer.test", "sub": sub,
                "groups": ["dev", "ops"], "org": {"team": "payments", "level": 3}}),
        }
    }

    #[test]
    fn every_when_key() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().expect("value"));
        let authed = Call {
            headers,
            auth: Some(token("alice")),
            ..call()
        };
        let cases: &[(&str, &str, bool)] = &[
            ("request.headers[X-Tenant]", "[acme]", true),
            ("request.headers[x-tenant]", "[other]", false),
            ("request.headers[x-missing]", "[\"*\"]", false),
            ("source.ip", "[10.0.0.0/24]", true),
            ("source.ip", "[10.1.0.0/16]", false),
            ("source.namespace", "[demo]", true),
            (
                "source.principal",
                "[cluster.local/ns/demo/sa/client]",
                true,
            ),
            ("source.principal", "[\"*/sa/other\"]", false),
            ("destination.port", "[\"8080\"]", true),
            (
                "request.auth.principal",
                "[https://issuer.test/alice]",
                true,
            ),
            ("request.auth.principal", "[https://issuer.test/bob]", false),
            ("request.auth.audiences", "[web]", true),
            ("request.auth.audiences", "[mobile]", false),
            ("request.auth.presenter", "[frontend]", true),
            ("request.auth.claims[groups]", "[ops]", true),
            ("request.auth.claims[groups]", "[admin]", false),
            ("request.auth.claims[org][team]", "[payments]", true),
            ("request.auth.claims[org][level]", "[\"3\"]", true),
            ("request.auth.claims[org][missing]", "[\"*\"]", false),
        ];
        for (key, values, expected) in cases {
            let spec = format!("rules: [{{when: [{{key: \"{key}\", values: {values}}}]}}]");
            assert_eq!(allows(&spec, &authed), *expected, "{key} in {values}");
            let not = format!("rules: [{{when: [{{key: \"{key}\", notValues: {values}}}]}}]");
            assert_eq!(allows(&not, &authed), !*expected, "{key} not in {values}");
        }
        // Without a token, request.auth.* has nothing to match.
        let spec = "rules: [{when: [{key: request.auth.principal, values: [\"*\"]}]}]";
        assert!(!allows(spec, &call()));
    }

    #[test]
    fn request_principals_and_the_token_requirement() {
        let alice = Call {
            auth: Some(token("alice")),
            ..call()
        };
        let spec = "rules: [{from: [{source: {requestPrincipals: [\"https://issuer.test/*\"]}}]}]";
        assert!(allows(spec, &alice));
        assert!(!allows(spec, &call()));
        // Istio's way to require a token: DENY notRequestPrincipals ["*"].
        let require = policy(&format!(
            "{TARGET}action: DENY\nrules: [{{from: [{{source: {{notRequestPrincipals: [\"*\"]}}}}]}}]"
        ));
        assert_eq!(
            decide(std::slice::from_ref(&require), &call()),
            (Verdict::Deny, Reason::DeniedByPolicy)
        );
        assert_eq!(
            decide(std::slice::from_ref(&require), &alice),
            (Verdict::Allow, Reason::NoPolicy)
        );
    }

    #[test]
    fn deny_wins_over_allow_and_dry_run_only_notes() {
        let allow_get = policy(&format!(
            "{TARGET}rules: [{{to: [{{operation: {{methods: [GET, POST]}}}}]}}]"
        ));
        let deny_admin = policy(&format!(
            "{TARGET}action: DENY\nrules: [{{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]"
        ));
        let post_admin = Call {
            method: "POST",
            path: "/admin",
            ..call()
        };
        let both = [allow_get.clone(), deny_admin];
        assert_eq!(
            decide(&both, &post_admin),
            (Verdict::Deny, Reason::DeniedByPolicy)
        );
        assert_eq!(
            decide(&both, &call()),
            (Verdict::Allow, Reason::AllowedByPolicy)
        );
        let dry = policy(&format!(
            "{TARGET}action: DENY\ndryRun: true\nrules: [{{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]"
        ));
        assert_eq!(decide(&[allow_get, dry], &post_admin).0, Verdict::Allow);
    }

    #[test]
    fn a_waypoint_applies_only_what_targets_it_or_its_services() {
        let selector = policy("selector: {matchLabels: {app: api}}\naction: DENY\nrules: [{}]");
        assert_eq!(decide(&[selector], &call()).0, Verdict::Allow);
        let gateway = policy("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\naction: DENY\nrules: [{}]");
        assert_eq!(decide(&[gateway], &call()).0, Verdict::Deny);
        let other = policy("targetRefs: [{kind: Service, name: other}]\naction: DENY\nrules: [{}]");
        assert_eq!(decide(&[other], &call()).0, Verdict::Allow);
    }

    #[test]
    fn bad_when_keys_are_refused_with_what_to_write() {
        for key in [
            "request.header[x]",
            "request.headers[]",
            "request.auth.claims",
            "source.user",
            "request.headers[a][b]",
        ] {
            let spec = serde_yaml::from_str(&format!(
                "rules: [{{when: [{{key: \"{key}\", values: [x]}}]}}]"
            ))
            .expect("spec");
            let error = compile("demo", "p", spec).expect_err(key).to_string();
            assert!(error.contains("when[0]") && error.contains(key), "{error}");
        }
        let spec = serde_yaml::from_str("rules: [{when: [{key: source.ip, values: [nonsense]}]}]")
            .expect("spec");
        assert!(compile("demo", "p", spec).is_err());
    }
}

mod request_auth {
    //! `RequestAuthentication` validation: what is refused, with what to fix, and the
    //! defaults a rule gets.

    use crate::policy::request_auth::{compile, Keys};

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"rWT_r3fsaZfpXEAKrClC-II-91SE5ci5BFFEkqa9dfQ","y":"z_dXupa45So7zCLNv0zEkIS9NjICcBS4r71-HAiAVmQ"}]}"#;

    fn spec(rules: &str) -> crate::policy::request_auth::RequestAuthenticationSpec {
        serde_yaml::from_str(&format!(
            "targetRefs: [{{kind: Service, name: api}}]\njwtRules: {rules}"
        ))
        .expect("spec")
    }

    #[test]
    fn a_rule_gets_istios_default_token_locations() {
        let compiled = compile(
            "demo",
            "ra",
            spec(&format!("[{{issuer: https://i.test, jwks: '{JWKS}'}}]")),
        )
        .expect("compiles");
        let rule = &compiled.rules[0];
        assert_eq!(
            rule.from_headers,
            [(http::header::AUTHORIZATION, "Bearer ".to_owned())]
        );
        assert_eq!(rule.from_params, ["access_token"]);
        assert!(matches!(&rule.keys, Keys::Inline(k) if k.len() == 1));
        assert!(!rule.forward_original_token);
        let uri = compile(
            "demo",
            "ra",
            spec("[{issuer: i, jwksUri: 'http://keys.demo:8081/jwks.json', fromHeaders: [{name: X-Token}], outputClaimToHeaders: [{header: x-team, claim: org.team}]}]"),
        )
        .expect("compiles");
        let rule = &uri.rules[0];
        assert!(matches!(&rule.keys, Keys::Uri(u) if u.port_u16() == Some(8081)));
        assert_eq!(rule.from_headers[0].0.as_str(), "x-token");
        assert!(rule.from_params.is_empty());
        assert_eq!(rule.output_claim_to_headers[0].1, ["org", "team"]);
    }

    #[test]
    fn bad_objects_are_refused_with_what_to_fix() {
        let cases = [
            ("[]", "jwtRules: is empty"),
            ("[{issuer: ''}]", "issuer: is empty"),
            ("[{issuer: i}]", "give jwks"),
            (&*format!("[{{issuer: i, jwks: '{JWKS}', jwksUri: 'http://k/j'}}]"), "not both"),
            ("[{issuer: i, jwksUri: 'ftp://k/j'}]", "http:// or https://"),
            ("[{issuer: i, jwks: '{\"keys\": []}'}]", "no key of the set"),
            ("[{issuer: i, jwks: 'nonsense'}]", "not JSON"),
            ("[{issuer: i, jwksUri: 'http://k/j', outputClaimToHeaders: [{header: x, claim: 'a..b'}]}]", "not a claim name"),
            ("[{issuer: i, jwksUri: 'http://k/j', fromHeaders: [{name: 'bad header'}]}]", "not a header name"),
        ];
        for (rules, want) in cases {
            let error = compile("demo", "ra", spec(rules))
                .expect_err(rules)
                .to_string();
            assert!(error.contains(want), "{rules}: {error}");
        }
        let untargeted = serde_yaml::from_str(
            "selector: {matchLabels: {app: api}}\njwtRules: [{issuer: i, jwksUri: 'http://k/j'}]",
        )
        .expect("spec");
        let error = compile("demo", "ra", untargeted)
            .expect_err("no targets")
            .to_string();
        assert!(error.contains("targetRefs"), "{error}");
    }
}
