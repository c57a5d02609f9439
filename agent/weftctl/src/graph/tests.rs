use weft_api::{requests::RequestRecord, Direction, Flow, FlowEvent, Security, Verdict};

use super::{dot, table, Edges};

fn flow(direction: Direction, event: FlowEvent, security: Security, ends: (&str, &str)) -> Flow {
    let (local, peer) = match direction {
        Direction::Outbound => ends,
        Direction::Inbound => (ends.1, ends.0),
    };
    Flow {
        time_unix_ms: 1_000,
        event,
        direction,
        workload: local.into(),
        source: "10.0.0.1:40000".parse().expect("addr"),
        destination: "10.0.0.2:8080".parse().expect("addr"),
        service: None,
        peer_workload: Some(peer.into()),
        waypoint: None,
        carried_identity: None,
        connect_attempts: 1,
        peer_identity: None,
        peer_certificate_serial: None,
        workload_identity: None,
        security,
        verdict: Verdict::Allow,
        reason: "none".into(),
        detail: String::new(),
        policy: None,
        notes: Vec::new(),
        bytes_from_client: 0,
        bytes_to_client: 0,
        duration_ms: 0,
    }
}

#[test]
fn a_connection_counts_once_where_it_left_and_arrivals_from_outside_count_where_they_land() {
    let ab = ("demo/a", "demo/b");
    let flows = [
        flow(Direction::Outbound, FlowEvent::Opened, Security::Mtls, ab),
        flow(Direction::Outbound, FlowEvent::Closed, Security::Mtls, ab),
        flow(Direction::Inbound, FlowEvent::Opened, Security::Mtls, ab),
        flow(Direction::Outbound, FlowEvent::Failed, Security::Mtls, ab),
        flow(
            Direction::Inbound,
            FlowEvent::Opened,
            Security::Plaintext,
            ("legacy/x", "demo/b"),
        ),
        Flow {
            carried_identity: Some("spiffe://cluster.local/ns/demo/sa/a".into()),
            ..flow(
                Direction::Inbound,
                FlowEvent::Opened,
                Security::Mtls,
                ("demo/waypoint", "demo/b"),
            )
        },
    ];
    let merged = Edges::from_flows(&flows, 0, None);
    assert_eq!(merged.len(), 3, "{merged:?}");
    let tunnel = merged
        .iter()
        .find(|e| e.source == "demo/waypoint")
        .expect("waypoint->b");
    assert_eq!(
        tunnel.connections, 1,
        "a waypoint's tunnel is counted where it arrives"
    );
    let ab = merged.iter().find(|e| e.source == "demo/a").expect("a->b");
    assert_eq!(
        (ab.connections, ab.mtls_connections, ab.failed_connections),
        (2, 2, 1)
    );
    let outside = merged
        .iter()
        .find(|e| e.source == "legacy/x")
        .expect("x->b");
    assert_eq!((outside.connections, outside.mtls_connections), (1, 0));
    // Alone, the node of demo/b (and not demo/a) also counts what arrived from demo/a.
    let alone = Edges::from_flows(&flows[2..3], 0, Some(&["demo/b".to_owned()]));
    assert_eq!(alone.len(), 1);
    assert!(
        Edges::from_flows(&flows, 2_000, None).is_empty(),
        "older than the window"
    );
}

#[test]
fn requests_give_rates_errors_and_a_p99_and_merging_sums_them() {
    let record = |status: u16, duration_ms: u64| RequestRecord {
        at_unix_ms: 1_000,
        status,
        duration_ms,
        client_pod: Some("demo/client".into()),
        upstream_pod: Some("demo/echo-v1".into()),
        ..RequestRecord::default()
    };
    let mut records: Vec<RequestRecord> = (1..=99).map(|ms| record(200, ms)).collect();
    records.push(record(503, 500));
    let mut graph = Edges {
        window_secs: 10,
        edges: Edges::from_requests(&records, 0, "demo/waypoint"),
    };
    let more = Edges {
        window_secs: 10,
        edges: Edges::from_requests(&records[..10], 0, "demo/waypoint"),
    };
    graph.merge(more);
    let edge = &graph.edges[0];
    assert_eq!((edge.requests, edge.failed_requests), (110, 1));
    assert_eq!(edge.via.as_deref(), Some("demo/waypoint"));
    assert_eq!(edge.quantile_ms(0.5), Some(45));
    assert_eq!(edge.quantile_ms(0.99), Some(99));
    let text = table(&graph);
    assert!(text.contains("11.00/s") && text.contains("0.9%"), "{text}");
    let dot = dot(&graph);
    assert!(
        dot.contains("\"demo/client\" -> \"demo/echo-v1\"") && dot.contains("via demo/waypoint"),
        "{dot}"
    );
    assert!(
        dot.contains("color=red"),
        "an edge with errors is red: {dot}"
    );
}
