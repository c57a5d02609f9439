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
