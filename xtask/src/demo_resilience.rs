//! The tour's resilience part, at the waypoint, on `demo/echo` (echo-v1 and echo-v2, no
//! route): fault injection aborting half the requests, retries hiding a failing echo-v1,
//! outlier detection ejecting it (shown by `weftctl endpoints`), and a rate limit answering
//! 429 past its budget. Each step writes a TrafficPolicy to `resilience.yaml` and counts what
//! 100 requests came to.

use std::{collections::BTreeMap, fmt::Write as _, process::Command, time::Duration};

use weft_harness::{manifests::Manifests, Cluster};

use crate::demo;

/// What one request came to: status, the echo that answered (`-`: the waypoint itself) and
/// the waypoint's reason (`-`: routed).
type Answer = (u16, String, String);

/// `count` requests to `url` from demo/client in one curl run, with `header` if any.
fn requests(
    cluster: &Cluster,
    url: &str,
    count: usize,
    header: Option<&str>,
) -> anyhow::Result<Vec<Answer>> {
    let mut config = String::from(
        "write-out = \"%{http_code} %header{x-echo-server} %header{x-weft-reason}\\n\"\n",
    );
    if let Some(header) = header {
        let _ = writeln!(config, "header = \"{header}\"");
    }
    for _ in 0..count {
        let _ = writeln!(config, "url = \"{url}\"\noutput = \"/dev/null\"");
    }
    let file = demo::state_dir().join("resilience-curl.conf");
    std::fs::write(&file, config)?;
    let netns = &cluster.pod("demo", "client").netns;
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "--max-time",
            "5",
            "-K",
        ])
        .arg(&file)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let status = parts.next()?.parse().ok()?;
            let word = |w: Option<&str>| w.filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
            Some((status, word(parts.next()), word(parts.next())))
        })
        .collect())
}

/// Prints how many answers had each status, echo and reason.
fn tally(answers: &[Answer]) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (status, server, reason) in answers {
        *counts
            .entry(format!("{status} from {server:<8} reason {reason}"))
            .or_default() += 1;
    }
    for (what, n) in counts {
        println!("  {n:>4}  {what}");
    }
}

fn apply(manifests: &Manifests, spec: &str) -> anyhow::Result<()> {
    let yaml = format!(
        "apiVersion: weft.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo-resilience, namespace: demo}}\nspec:\n  targetRefs: [{{kind: Service, name: echo}}]\n{spec}"
    );
    println!("  {}", spec.trim());
    manifests.write("resilience.yaml", &yaml)?;
    // The waypoint reads the folder within a few hundred milliseconds.
    std::thread::sleep(Duration::from_millis(800));
    Ok(())
}

/// The resilience tour; `demo/echo` must use the waypoint with no route. Leaves no policy.
pub fn tour(cluster: &Cluster, manifests: &Manifests) -> anyhow::Result<()> {
    let url = format!("http://{}/", demo::ECHO_VIP);
    demo::banner(
        "Fault injection: a TrafficPolicy aborts 50% of the requests to demo/echo with 503",
    );
    apply(
        manifests,
        "  faultInjection: {abort: {httpStatus: 503, percent: 50}}\n",
    )?;
    tally(&requests(cluster, &url, 100, None)?);

    demo::banner("Retries: echo-v1 fails (x-echo-fail-on: echo-v1); retries on 5xx hide it");
    apply(manifests, "  retry: {attempts: 2, retryOn: [5xx]}\n")?;
    let answers = requests(cluster, &url, 100, Some("x-echo-fail-on: echo-v1"))?;
    tally(&answers);
    let errors = answers.iter().filter(|a| a.0 >= 500).count();
    println!("  errors seen by the client: {errors}");

    demo::banner("Outlier detection: 3 failures in a row eject echo-v1 for 10 s");
    apply(
        manifests,
        "  outlierDetection: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 10s, maxEjectionPercent: 50}\n",
    )?;
    tally(&requests(
        cluster,
        &url,
        20,
        Some("x-echo-fail-on: echo-v1"),
    )?);
    println!("  and without the failing header, while echo-v1 is out:");
    tally(&requests(cluster, &url, 20, None)?);
    demo::banner("weftctl --waypoint demo/waypoint endpoints demo/echo");
    demo::weftctl(&["--waypoint", "demo/waypoint", "endpoints", "demo/echo"])?;

    demo::banner("A rate limit: 5 requests per second, burst 5; 20 at once get 429 past it");
    apply(
        manifests,
        "  localRateLimit: {requests: 5, per: 1s, burst: 5}\n",
    )?;
    tally(&requests(cluster, &url, 20, None)?);
    manifests.write("resilience.yaml", "")?;
    Ok(())
}
