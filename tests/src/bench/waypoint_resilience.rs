//! The resilience scenario of the waypoint bench: `demo/resilient` (echo-v1 and echo-v2)
//! where echo-v1 fails 10% of requests at random (`/fail-sometimes/echo-v1/10`), loaded at
//! 500 requests a second over 8 connections under three TrafficPolicies in turn: none,
//! retries on 5xx, and retries with outlier ejection. What the clients saw (success rate and
//! latency) is compared with no policy, measured in the same run.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    load::LoadReport,
    waypoint_mesh::{Mesh, RESILIENT},
};

/// The path that makes echo-v1 fail 10% of the requests it gets.
const FAILING_PATH: &str = "/fail-sometimes/echo-v1/10";

/// The policies compared, by name.
const POLICIES: [(&str, &str); 3] = [
    ("no policy", ""),
    ("retries", "  retry: {attempts: 2, retryOn: [5xx]}\n"),
    (
        "retries + ejection",
        "  retry: {attempts: 2, retryOn: [5xx]}\n  outlierDetection: {consecutiveErrors: 2, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 50}\n",
    ),
];

/// One policy's run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResilienceCase {
    pub policy: String,
    pub load: LoadReport,
    /// Percent of the requests answered 2xx.
    pub success_percent: f64,
}

/// Runs the three cases on `mesh`'s `demo/resilient`.
pub fn run(mesh: &Mesh, (seconds, warmup): (f64, f64)) -> anyhow::Result<Vec<ResilienceCase>> {
    let client = mesh.pod("client");
    let target = SocketAddr::new(RESILIENT.into(), 80);
    let mut cases = Vec::new();
    for (policy, spec) in POLICIES {
        let yaml = if spec.is_empty() {
            String::new()
        } else {
            format!(
                "apiVersion: weft.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: bench-resilience, namespace: demo}}\nspec:\n  targetRefs: [{{kind: Service, name: resilient}}]\n{spec}"
            )
        };
        mesh.manifests.write("traffic.yaml", &yaml)?;
        // The waypoint reads the folder within a few hundred milliseconds.
        std::thread::sleep(Duration::from_secs(1));
        let load = super::waypoint::load(
            mesh,
            &client,
            (target, FAILING_PATH),
            false,
            (500.0, 8, seconds, warmup),
        )?;
        #[expect(clippy::cast_precision_loss, reason = "request counts fit")]
        let success_percent =
            load.completed as f64 / (load.completed + load.errors).max(1) as f64 * 100.0;
        eprintln!(
            "waypoint bench: resilience, {policy}: {success_percent:.2}% succeeded, p99 {:.0} µs",
            load.latency_us.p99
        );
        cases.push(ResilienceCase {
            policy: policy.to_owned(),
            load,
            success_percent,
        });
    }
    mesh.manifests.write("traffic.yaml", "")?;
    Ok(cases)
}

/// Each policy's success rate and latency against no policy.
pub fn rows(cases: &[ResilienceCase]) -> Vec<super::Row> {
    let section = "waypoint resilience (1 of 2 endpoints fails 10%, 500 rps)";
    let Some(none) = cases.first() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for case in &cases[1..] {
        rows.push(super::Row {
            lower_is_better: false,
            ..super::Row::lower(
                section,
                &format!("success % with {} (baseline: no policy)", case.policy),
                none.success_percent,
                case.success_percent,
                "%",
            )
        });
        for (name, baseline, weft) in [
            ("p50", none.load.latency_us.p50, case.load.latency_us.p50),
            ("p99", none.load.latency_us.p99, case.load.latency_us.p99),
        ] {
            rows.push(super::Row::lower(
                section,
                &format!("{name} with {}", case.policy),
                baseline,
                weft,
                "µs",
            ));
        }
    }
    rows
}
