//! The waypoint on the real kernel: a Service labelled `weft.io/use-waypoint` is tunnelled by
//! the client's agent to the waypoint pod (HBONE, `:authority` = the VIP), which routes each
//! HTTP request by the Service's HTTPRoute (weights, a header match, a redirect, a header
//! filter) and tunnels it to a backend pod through that pod's agent under its own identity.
//! curl is the client, over HTTP/1.1 and HTTP/2 prior knowledge; a Service without the label
//! stays L4.

use std::{path::Path, time::Duration};

use weft_harness::{
    eventually, require_privileges,
    waypoint_mesh::{Mesh, DIRECT, ECHO},
};

fn start() -> Mesh {
    let bins = Path::new(env!("CARGO_BIN_EXE_weft-testpod"))
        .parent()
        .expect("the target folder");
    Mesh::start(bins, Path::new(env!("CARGO_TARGET_TMPDIR"))).expect("the waypoint mesh")
}

#[test]
fn a_service_that_uses_the_waypoint_is_routed_by_its_httproute() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let client_ip = mesh.pod("client").ip.to_string();
    // A deep path: the catch-all rule takes every path, not only "/".
    let url = format!("http://{ECHO}/catalog/items");
    // The 90/10 split over 100 requests: within the binomial 99.9% interval [1, 22].
    let mut v2 = 0;
    for _ in 0..100 {
        let body = mesh.curl(&[&url]);
        assert!(
            body.contains("header x-weft-route: split"),
            "the filter's header: {body}"
        );
        assert!(
            body.contains(&format!("header x-forwarded-for: {client_ip}")),
            "the client travels in X-Forwarded-For: {body}"
        );
        if body.contains("server=echo-v2") {
            v2 += 1;
        } else {
            assert!(body.contains("server=echo-v1"), "{body}");
        }
    }
    assert!(
        (1..=22).contains(&v2),
        "{v2} of 100 requests reached echo-v2 (weight 10 of 100)"
    );
    // A header match wins over the catch-all rule.
    for _ in 0..10 {
        let body = mesh.curl(&["-H", "x-version: v2", &url]);
        assert!(body.contains("server=echo-v2"), "{body}");
        assert!(
            !body.contains("x-weft-route"),
            "only the matched rule's filters apply"
        );
    }
    // HTTP/2 with prior knowledge reaches the backend as HTTP/2.
    let body = mesh.curl(&["--http2-prior-knowledge", &url]);
    assert!(body.contains("version=HTTP/2"), "{body}");
    // A redirect is the waypoint's own answer.
    let head = mesh.curl(&["-i", &format!("http://{ECHO}/old/page?q=1")]);
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: http://example.com/old/page?q=1"),
        "{head}"
    );
    // route-check explains the choice without sending anything, from the waypoint's admin.
    let (ok, explained) = mesh.weftctl(&[
        "route-check",
        "GET",
        &format!("http://{ECHO}/old/x"),
        "-H",
        "x-version: v1",
    ]);
    assert!(ok, "{explained}");
    assert!(
        explained.contains("chosen: demo/echo rule 3"),
        "{explained}"
    );
    assert!(explained.contains("RequestRedirect"), "{explained}");
    assert!(
        explained.contains(r#"header x-version is "v1" (wants "v2")"#),
        "{explained}"
    );
    assert!(
        explained.contains("matches, but a more specific or earlier rule ranks first"),
        "the catch-all matched too: {explained}"
    );
    // The client's agent says the connection went through the waypoint.
    let node0 = mesh.cluster.node("node0").clone();
    let flows = mesh.cluster.admin(&node0, "/flows").expect("flows");
    assert!(
        flows
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["waypoint"] == "demo/waypoint" && f["service"] == "demo/echo"),
        "a flow names the waypoint: {flows}"
    );
    // The destination agent saw the waypoint's identity.
    let node1 = mesh.cluster.node("node1").clone();
    let flows = mesh.cluster.admin(&node1, "/flows").expect("flows");
    assert!(
        flows
            .as_array()
            .into_iter()
            .flatten()
            .any(
                |f| f["peerIdentity"] == "spiffe://cluster.local/ns/demo/sa/waypoint"
                    && f["carriedIdentity"] == "spiffe://cluster.local/ns/demo/sa/client"
            ),
        "node1 recorded the waypoint as the peer and the client as carried: {flows}"
    );
}

#[test]
fn a_service_without_the_label_stays_l4() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let body = mesh.curl(&[&format!("http://{DIRECT}/")]);
    assert!(body.contains("server=echo-v1"), "{body}");
    assert!(
        !body.contains("x-forwarded-for"),
        "no waypoint touched it: {body}"
    );
    let node0 = mesh.cluster.node("node0").clone();
    let flows = mesh.cluster.admin(&node0, "/flows").expect("flows");
    let direct: Vec<&serde_json::Value> = flows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["service"] == "demo/direct")
        .collect();
    assert!(!direct.is_empty(), "{flows}");
    assert!(
        direct.iter().all(|f| f.get("waypoint").is_none()),
        "{flows}"
    );
}

#[test]
fn a_rules_timeout_answers_504_and_a_mirror_gets_a_copy_the_client_never_sees() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    // A rule's timeout answers 504 within 10% of it (the backend holds its answer 2 s).
    let timed = mesh.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_total}",
        "-H",
        "x-delay-ms: 2000",
        &format!("http://{ECHO}/slow"),
    ]);
    let (code, seconds) = timed.split_once(' ').expect("code and time");
    assert_eq!(code, "504", "{timed}");
    let seconds: f64 = seconds.trim().parse().expect("seconds");
    assert!(
        (0.36..=0.44).contains(&seconds),
        "504 after {seconds} s; the route's timeout is 400 ms"
    );
    let fast = mesh.curl(&["-H", "x-delay-ms: 50", &format!("http://{ECHO}/slow")]);
    assert!(
        fast.contains("server=echo-v1"),
        "within its timeout a request is answered: {fast}"
    );
    // A mirrored rule: the client sees only the primary's answer, the mirror gets a copy.
    for _ in 0..5 {
        let body = mesh.curl(&["-d", "copied body", &format!("http://{ECHO}/mirrored")]);
        assert!(
            body.contains("server=echo-v1"),
            "the primary answers: {body}"
        );
    }
    eventually(
        Duration::from_secs(5),
        "the mirror received every copy",
        || {
            std::fs::read_to_string(mesh.logs.join("mirror.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| *l == "request POST /mirrored")
                .count()
                == 5
        },
    );
}
