//! Endpoint choice and outlier detection, without a network.

use std::{net::SocketAddr, time::Duration};

use weft_mesh::policy::{resilience::Outlier, traffic::Algorithm};

use super::{key_hash, Endpoints, NoPick, Result};

fn endpoints(n: u8) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
        .collect()
}

fn outlier(consecutive: u32, max_percent: u32) -> Outlier {
    Outlier {
        consecutive_5xx: Some(consecutive),
        consecutive_gateway: None,
        interval: Duration::from_secs(1),
        base_ejection: Duration::from_millis(200),
        max_percent,
    }
}

#[test]
fn consistent_hashing_keeps_keys_and_moves_only_the_removed_endpoints_share() {
    let three = endpoints(3);
    let mut state = Endpoints::default();
    let keys: Vec<u64> = (0..1_000)
        .map(|k| key_hash(format!("user-{k}").as_bytes()))
        .collect();
    let before: Vec<SocketAddr> = keys
        .iter()
        .map(|k| {
            state
                .pick(Algorithm::ConsistentHash, &three, Some(*k), &[])
                .expect("pick")
        })
        .collect();
    for (key, first) in keys.iter().zip(&before) {
        let again = state.pick(Algorithm::ConsistentHash, &three, Some(*key), &[]);
        assert_eq!(again, Ok(*first));
    }
    let two = &three[..2];
    let moved = keys
        .iter()
        .zip(&before)
        .filter(|(key, first)| {
            state.pick(Algorithm::ConsistentHash, two, Some(**key), &[]) != Ok(**first)
        })
        .count();
    let held = before.iter().filter(|e| **e == three[2]).count();
    assert!(held > 200, "the third endpoint held {held} of 1000 keys");
    assert!(
        moved <= held + 50,
        "{moved} keys moved; the removed endpoint held {held}"
    );
}

#[test]
fn a_retry_avoids_the_endpoint_already_tried() {
    let two = endpoints(2);
    let mut state = Endpoints::default();
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::LeastRequest,
    ] {
        for _ in 0..50 {
            assert_eq!(state.pick(algorithm, &two, None, &two[..1]), Ok(two[1]));
        }
    }
    // With every endpoint tried, one is still chosen.
    assert!(state.pick(Algorithm::RoundRobin, &two, None, &two).is_ok());
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let two = endpoints(2);
    let mut state = Endpoints::default();
    state
        .pick(Algorithm::LeastRequest, &two, None, &[])
        .expect("pick");
    for _ in 0..5 {
        state.started(two[0]);
    }
    for _ in 0..50 {
        assert_eq!(
            state.pick(Algorithm::LeastRequest, &two, None, &[]),
            Ok(two[1])
        );
    }
}

#[test]
fn consecutive_errors_eject_an_endpoint_for_a_growing_time_within_the_max_percent() {
    let two = endpoints(2);
    let mut state = Endpoints::default();
    state
        .pick(Algorithm::RoundRobin, &two, None, &[])
        .expect("pick");
    let rule = outlier(3, 50);
    let latency = Duration::from_millis(1);
    assert_eq!(
        state.report(two[0], Result::Status(503), latency, Some(&rule)),
        None
    );
    assert_eq!(
        state.report(two[0], Result::Status(200), latency, Some(&rule)),
        None
    );
    assert_eq!(
        state.report(two[0], Result::Status(500), latency, Some(&rule)),
        None
    );
    assert_eq!(
        state.report(two[0], Result::Failed, latency, Some(&rule)),
        None
    );
    let ejected = state
        .report(two[0], Result::Status(502), latency, Some(&rule))
        .expect("ejected after 3 in a row");
    assert_eq!(ejected.duration, Duration::from_millis(200));
    for _ in 0..20 {
        assert_eq!(
            state.pick(Algorithm::RoundRobin, &two, None, &[]),
            Ok(two[1])
        );
    }
    // 50%: the second endpoint may not go while the first is out.
    for _ in 0..3 {
        assert_eq!(
            state.report(two[1], Result::Status(500), latency, Some(&rule)),
            None
        );
    }
    #[expect(
        clippy::disallowed_methods,
        reason = "a plain test thread with no runtime to block"
    )]
    std::thread::sleep(Duration::from_millis(250));
    let back = (0..20)
        .filter(|_| state.pick(Algorithm::RoundRobin, &two, None, &[]) == Ok(two[0]))
        .count();
    assert!(back > 0, "the ejected endpoint came back");
    // A second ejection soon after lasts twice as long.
    for _ in 0..2 {
        state.report(two[0], Result::Status(500), latency, Some(&rule));
    }
    let again = state
        .report(two[0], Result::Status(500), latency, Some(&rule))
        .expect("ejected again");
    assert_eq!(again.duration, Duration::from_millis(400));
}

#[test]
fn every_endpoint_ejected_or_unhealthy_is_no_healthy_endpoint() {
    let one = endpoints(1);
    let mut state = Endpoints::default();
    assert_eq!(
        state.pick(Algorithm::RoundRobin, &[], None, &[]),
        Err(NoPick::NoEndpoints)
    );
    state
        .pick(Algorithm::RoundRobin, &one, None, &[])
        .expect("pick");
    assert_eq!(state.probed(one[0], false, (1, 2), 0), None);
    assert_eq!(state.probed(one[0], false, (1, 2), 0), Some(false));
    assert_eq!(
        state.pick(Algorithm::RoundRobin, &one, None, &[]),
        Err(NoPick::NoHealthy)
    );
    assert_eq!(state.probed(one[0], true, (1, 2), 0), Some(true));
    assert_eq!(
        state.pick(Algorithm::RoundRobin, &one, None, &[]),
        Ok(one[0])
    );
}

#[test]
fn a_health_check_removed_gives_its_unhealthy_endpoints_back() {
    let mut state = Endpoints::default();
    let one = endpoints(1);
    let begun = state.health_epoch();
    state.probed(one[0], false, (1, 1), begun);
    assert_eq!(
        state.pick(Algorithm::RoundRobin, &one, None, &[]),
        Err(NoPick::NoHealthy)
    );
    assert_eq!(state.clear_health(), one.clone());
    // A probe begun before the check was removed finishes late: it must not count.
    assert_eq!(state.probed(one[0], false, (1, 1), begun), None);
    assert_eq!(
        state.pick(Algorithm::RoundRobin, &one, None, &[]),
        Ok(one[0])
    );
    assert!(state.clear_health().is_empty(), "nothing was unhealthy");
}
