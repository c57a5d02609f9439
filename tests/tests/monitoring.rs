//! deploy/monitoring on the real mesh: promtool checks and unit-tests the rules, then a real Prometheus (Debian's package) scrapes the waypoint fixture's agents and waypoint through traffic, loads the rules, and every Grafana panel's query must parse, return data and name only metrics and labels the mesh exports.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_harness::{
    eventually, netns,
    privileges::skip,
    require_privileges,
    waypoint_mesh::{self, Extras, Mesh, ECHO, GUARDED, RESILIENT, TCP},
    NodeHandle,
};

/// Set only by an agent in Kubernetes mode (agent/mesh/src/metrics.rs: "absent, never set, in
/// local mode"). The fixture's agents read manifests, so queries on these must parse but may
/// return nothing; that the agent registers them is checked in its source instead.
const KUBE_MODE_ONLY: [&str; 2] = ["weft_kube_watch_errors", "weft_kube_watch_synced"];

/// `demo/monitoring-empty`: no endpoint and no waypoint, so the client's agent fails its
/// connections (`no_ready_endpoints`).
const EMPTY_L4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);

/// A policy denying demo/client at echo-v3's agent, one denying `/forbidden*` of demo/guarded at
/// the waypoint, and retries and outlier detection for demo/resilient.
const POLICIES: &str = r#"apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: monitoring-deny-direct, namespace: demo}
spec:
  selector: {matchLabels: {app: guarded}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: monitoring-deny-forbidden, namespace: demo}
spec:
  targetRefs: [{kind: Service, name: guarded}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/forbidden*"]}}]}]
---
apiVersion: weft.io/v1alpha1
kind: TrafficPolicy
metadata: {name: monitoring-resilient, namespace: demo}
spec:
  targetRefs: [{kind: Service, name: resilient}]
  retry: {attempts: 2, retryOn: [5xx]}
  outlierDetection: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
"#;

/// PromQL words that are not metric names (aggregations may stand before `by (…)`), and those
/// a list of label names may follow.
const NOT_METRICS: &str = "and or unless bool offset inf nan sum min max avg count stddev stdvar \
    topk bottomk quantile count_values group";
const LABEL_LISTS: &str = "by without on ignoring group_left group_right";

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// `program` on PATH. Missing, it fails the test under CI=true and skips it elsewhere.
fn tool(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = format!(
            "{program} is missing: install Debian's prometheus package (`cargo xtask setup` does)"
        );
        skip(&format!("test needing {program}"), &why);
    }
    found
}

fn yaml(file: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(monitoring_dir().join(file)).expect(file);
    serde_yaml::from_str(&text).expect(file)
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules_test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(monitoring_dir())
            .output()
            .expect("promtool runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    }
    assert_eq!(
        yaml("prometheusrule.yaml")["spec"]["groups"],
        yaml("rules.yaml")["groups"],
        "the PrometheusRule must carry rules.yaml's groups: run `python3 deploy/check-monitoring.py --write`"
    );
}

/// Calls `check` every second until it returns `Ok`, failing with its last error after `limit`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if start.elapsed() >= limit => panic!("{what} (waited {limit:?}):\n{e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// A Prometheus in a node's netns, asked with curl there.
struct Prometheus {
    netns: String,
    port: u16,
}

impl Prometheus {
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["curl", "-s", "--max-time", "10", "-G", url.as_str()];
        for param in &params {
            args.extend(["--data-urlencode", param.as_str()]);
        }
        let body = netns::exec(&self.netns, &args).unwrap_or_else(|e| panic!("{path}: {e:#}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} answered {body:?}: {e}"))
    }

    fn strings(&self, path: &str, params: &[(&str, &str)]) -> BTreeSet<String> {
        let answer = self.get(path, params);
        let values = answer["data"].as_array().into_iter().flatten();
        values
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

/// Starts Prometheus in `node`'s netns (stopped by PID when the cluster drops), scraping both
/// agents' and the waypoint's metrics ports every second and evaluating deploy/monitoring's rules.
fn start_prometheus(mesh: &Mesh, node: &NodeHandle, binary: &Path) -> Prometheus {
    let dir = mesh.logs.join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus folder");
    let target = |ip: Ipv4Addr, name: &str| {
        format!("      - {{targets: ['{ip}:15020'], labels: {{node: {name}}}}}\n")
    };
    let agents: String = ["node0", "node1"]
        .into_iter()
        .map(|n| target(mesh.cluster.node(n).ip, n))
        .collect();
    let waypoint = mesh.pod("waypoint");
    let rules = monitoring_dir()
        .join("rules.yaml")
        .canonicalize()
        .expect("rules.yaml");
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n  - job_name: weft-agent\n    static_configs:\n{agents}  - job_name: weft-waypoint\n    static_configs:\n{}",
        rules.display(),
        target(waypoint.ip, waypoint.node.as_str())
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
    let port = netns::block_on(&node.netns, || async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok::<u16, anyhow::Error>(listener.local_addr()?.port())
    })
    .expect("a free port in the node");
    let mut command = Command::new(binary);
    command.args([
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--log.level=warn".to_owned(),
    ]);
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
    mesh.cluster
        .spawn_in_node_logged(node, &command, log)
        .expect("prometheus starts");
    let ready = format!("http://127.0.0.1:{port}/-/ready");
    eventually(Duration::from_secs(30), "Prometheus is ready", || {
        netns::exec(&node.netns, &["curl", "-sf", "--max-time", "1", &ready]).is_ok()
    });
    Prometheus {
        netns: node.netns.clone(),
        port,
    }
}

/// `count` requests to `url` from demo/client on one connection, with `headers`; the statuses.
fn requests(mesh: &Mesh, url: &str, count: usize, headers: &[&str]) -> Vec<String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut config = String::from("write-out = \"%{http_code}\\n\"\n");
    for header in headers {
        let _ = writeln!(config, "header = \"{header}\"");
    }
    for _ in 0..count {
        let _ = writeln!(config, "url = \"{url}\"\noutput = \"/dev/null\"");
    }
    let file = mesh.logs.join(format!(
        "monitoring-{}.curl",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, config).expect("curl config");
    let out = mesh.curl(&["-K", file.to_str().expect("path")]);
    out.lines().map(str::to_owned).collect()
}

/// One round of L7 traffic: 200s, 503s from the backend, retries and an ejection, denials.
fn l7_traffic(mesh: &Mesh) {
    let cases: [(String, usize, &[&str], Option<&str>); 5] = [
        (format!("{ECHO}/"), 20, &[], Some("200")),
        (format!("{ECHO}/status/503"), 10, &[], Some("503")),
        (
            format!("{RESILIENT}/"),
            10,
            &["x-echo-fail-on: echo-v1"],
            None,
        ),
        (format!("{GUARDED}/forbidden"), 5, &[], Some("403")),
        (format!("{GUARDED}/"), 5, &[], None),
    ];
    for (path, count, headers, want) in cases {
        let statuses = requests(mesh, &format!("http://{path}"), count, headers);
        assert!(
            want.is_none_or(|want| statuses.iter().all(|s| s == want)),
            "{path}: {statuses:?}"
        );
    }
}

/// What happens once at L4: a connection denied by policy and one failed for want of
/// endpoints (curl fails both, as it should), one carried at L4 by the waypoint, and a limit
/// hit (a request head over the readiness port's 16 KiB).
fn l4_events(mesh: &Mesh) {
    let client = mesh.pod("client");
    for url in [
        format!("http://{}:8080/", mesh.pod("echo-v3").ip),
        format!("http://{EMPTY_L4}/"),
    ] {
        let curl = ["-s", "--max-time", "3", "-o", "/dev/null", url.as_str()];
        let _ = mesh.cluster.run_in_pod(&client, "curl", &curl);
    }
    let testpod = mesh.bin("weft-testpod").expect("weft-testpod");
    let tcp = format!("{TCP}:9000");
    let send_args = ["send", tcp.as_str(), "1000"];
    let sent = mesh
        .cluster
        .run_in_pod(&client, testpod.to_str().expect("path"), &send_args);
    assert!(
        sent.expect("weft-testpod send").status.success(),
        "1000 bytes through demo/tcp"
    );
    let pad = format!("x-pad: {}", "a".repeat(20_000));
    let ready = "http://127.0.0.1:15021/healthz/ready";
    let curl = [
        "curl",
        "-s",
        "--max-time",
        "3",
        "-o",
        "/dev/null",
        "-H",
        pad.as_str(),
        ready,
    ];
    let _ = netns::exec(&mesh.cluster.node("node0").netns, &curl);
}

/// An expression with every dashboard variable given a value: intervals 1m, `$__range` 5m, the
/// others all values (`.*`; the dashboards match variables with `=~`).
fn substitute(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m");
    let expr = expr.replace("$__range", "5m");
    let (mut out, mut rest) = (String::new(), expr.as_str());
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let name = rest[at + 1..].trim_start_matches('{');
        let len = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        let after = &name[len.unwrap_or(name.len())..];
        out.push_str(".*");
        rest = if rest[at + 1..].starts_with('{') {
            after.strip_prefix('}').unwrap_or(after)
        } else {
            after
        };
    }
    out + rest
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Label names in a comma-separated list (`a, b`) or of matchers (`a="", b=~""`).
fn label_names(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .filter_map(|item| item.trim().split(|c: char| !is_name_char(c)).next())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

/// The metric names and label names a PromQL expression refers to: names that are neither a
/// function (followed by `(`) nor a keyword, the label names of `{…}` matchers and of
/// `by (…)`-like lists. Strings are emptied first, and durations and numbers skipped.
fn references(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut text, mut quote, mut escaped) = (String::new(), None, false);
    for c in expr.chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c != q => {}
            _ => {
                quote = if quote.is_none() && (c == '"' || c == '\'') {
                    Some(c)
                } else {
                    None
                };
                text.push(c);
            }
        }
    }
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let (mut rest, mut after_number) = (text.as_str(), false);
    while let Some(c) = rest.chars().next() {
        if c == '{' || c == '[' {
            let end = rest.find(if c == '{' { '}' } else { ']' });
            let end = end.unwrap_or(rest.len()).max(1);
            if c == '{' {
                labels.extend(label_names(&rest[1..end.min(rest.len())]));
            }
            rest = &rest[(end + 1).min(rest.len())..];
            continue;
        }
        let len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        if len == 0 || c.is_ascii_digit() || after_number {
            after_number = c.is_ascii_digit() || c == '.' || (after_number && is_name_char(c));
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let word = &rest[..len];
        rest = &rest[len..];
        let next = rest.trim_start();
        if LABEL_LISTS.split(' ').any(|w| w == word) {
            if let Some(list) = next.strip_prefix('(') {
                let end = list.find(')').unwrap_or(list.len());
                labels.extend(label_names(&list[..end]));
                rest = &list[(end + 1).min(list.len())..];
            }
        } else if !next.starts_with('(') && !NOT_METRICS.split_whitespace().any(|w| w == word) {
            metrics.insert(word.to_owned());
        }
    }
    (metrics, labels)
}

/// An expression to check, where it comes from, and whether to evaluate it here (a rule's is
/// evaluated by Prometheus itself, and its health checked).
struct Query {
    place: String,
    expr: String,
    evaluate: bool,
}

/// Every panel target and `label_values` variable (place, selector, label) of every dashboard,
/// and every rule.
fn queries() -> (Vec<Query>, Vec<(String, String, String)>) {
    let (mut queries, mut variables) = (Vec::new(), Vec::new());
    let mut files: Vec<PathBuf> = std::fs::read_dir(monitoring_dir().join("dashboards"))
        .expect("dashboards")
        .map(|e| e.expect("dashboard").path())
        .collect();
    files.sort();
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(file).expect("dashboard");
        let dashboard: Value = serde_json::from_str(&text).expect(&name);
        let panels = dashboard["panels"].as_array().expect("panels");
        let nested = panels
            .iter()
            .flat_map(|p| p["panels"].as_array().into_iter().flatten());
        for panel in panels.iter().chain(nested) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let place = format!("{name}, panel {}", panel["title"]);
                let expr = substitute(target["expr"].as_str().expect("expr"));
                queries.push(Query {
                    place,
                    expr,
                    evaluate: true,
                });
            }
        }
        let list = dashboard["templating"]["list"]
            .as_array()
            .expect("templating");
        for variable in list.iter().filter(|v| v["type"] == "query") {
            let query = variable["query"].as_str().expect("a label_values() query");
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'));
            let (selector, label) = inner.and_then(|q| q.rsplit_once(',')).expect(query);
            let place = format!("{name}, variable {}", variable["name"]);
            variables.push((place, substitute(selector.trim()), label.trim().to_owned()));
        }
    }
    let rules = yaml("rules.yaml");
    let groups = rules["groups"].as_sequence().expect("groups");
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
    {
        let name = rule["record"]
            .as_str()
            .or_else(|| rule["alert"].as_str())
            .expect("name");
        let expr = rule["expr"].as_str().expect("expr").to_owned();
        queries.push(Query {
            place: format!("rule {name}"),
            expr,
            evaluate: false,
        });
    }
    (queries, variables)
}

/// What is wrong now: rules Prometheus could not evaluate, names it has never seen, queries
/// that fail or return nothing, variables without a value.
fn problems(
    prometheus: &Prometheus,
    queries: &[Query],
    variables: &[(String, String, String)],
) -> Result<(), String> {
    let names = prometheus.strings("/api/v1/label/__name__/values", &[]);
    let labels = prometheus.strings("/api/v1/labels", &[]);
    let mut problems = Vec::new();
    let rules = prometheus.get("/api/v1/rules", &[]);
    let groups = rules["data"]["groups"].as_array().into_iter().flatten();
    for rule in groups.flat_map(|g| g["rules"].as_array().into_iter().flatten()) {
        if rule["health"] != "ok" {
            problems.push(format!(
                "rule {}: {} {}",
                rule["name"], rule["health"], rule["lastError"]
            ));
        }
    }
    let kube_only =
        |metrics: &BTreeSet<String>| metrics.iter().any(|m| KUBE_MODE_ONLY.contains(&m.as_str()));
    for Query {
        place,
        expr,
        evaluate,
    } in queries
    {
        let (metrics, used) = references(expr);
        for metric in metrics
            .difference(&names)
            .filter(|m| !KUBE_MODE_ONLY.contains(&m.as_str()))
        {
            problems.push(format!("{place}: the mesh exports no {metric}: {expr}"));
        }
        for label in used.difference(&labels) {
            problems.push(format!("{place}: no series has a label {label}: {expr}"));
        }
        if *evaluate {
            let answer = prometheus.get("/api/v1/query", &[("query", expr.as_str())]);
            let empty = answer["data"]["result"]
                .as_array()
                .is_none_or(Vec::is_empty);
            if answer["status"] != "success" {
                problems.push(format!("{place}: {expr} fails: {}", answer["error"]));
            } else if empty && !kube_only(&metrics) {
                problems.push(format!("{place}: no data for {expr}"));
            }
        }
    }
    for (place, selector, label) in variables {
        let path = format!("/api/v1/label/{label}/values");
        let values = prometheus.strings(&path, &[("match[]", selector.as_str())]);
        if values.is_empty() && !kube_only(&references(selector).0) {
            problems.push(format!("{place}: no value of {label} in {selector}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_prometheus_scraping_the_mesh() {
    if !require_privileges() {
        return;
    }
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let agent_metrics = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/mesh/src/metrics.rs");
    let source = std::fs::read_to_string(agent_metrics).expect("metrics.rs");
    for metric in KUBE_MODE_ONLY {
        let registered = format!("\"{}\"", metric.trim_start_matches("weft_"));
        assert!(
            source.contains(&registered),
            "the agent no longer registers {metric}"
        );
    }
    let bins = Path::new(env!("CARGO_BIN_EXE_weft-testpod"))
        .parent()
        .expect("the target folder");
    // Tracing on, to a collector port where nothing listens, so the span counters the rules
    // and the agent-health dashboard use have series (every export fails).
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let config = tmp.join(format!("monitoring-agent-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        "tracing:\n  endpoint: http://127.0.0.1:4319\n  scheduledDelayMs: 200\n",
    )
    .expect("agent config");
    let extras = Extras {
        waypoint_env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                "http://127.0.0.1:4319".into(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ],
        agent_flags: vec!["--config".into(), config.to_string_lossy().into_owned()],
    };
    let mesh = Mesh::start_with(bins, tmp, "info,weft_waypoint=debug", &extras)
        .expect("the waypoint mesh");
    let empty = waypoint_mesh::service(
        "monitoring-empty",
        EMPTY_L4,
        (80, 8080),
        &[],
        false,
        Some("name: http"),
    );
    let manifests = format!("{empty}---\n{POLICIES}");
    mesh.manifests
        .write("monitoring.yaml", &manifests)
        .expect("write");
    let node0 = mesh.cluster.node("node0").clone();
    eventually(
        Duration::from_secs(10),
        "the agent and the waypoint have the policies",
        || {
            let dump = mesh.waypoint_admin("/config_dump");
            let agent = mesh.cluster.admin(&node0, "/policies");
            ["monitoring-deny-forbidden", "monitoring-resilient"]
                .iter()
                .all(|n| dump.contains(&format!("\"name\":\"{n}\"")))
                && agent.is_ok_and(|p| p.to_string().contains("monitoring-deny-direct"))
        },
    );
    let node1 = mesh.cluster.node("node1").clone();
    let prometheus = start_prometheus(&mesh, &node1, &binary);
    wait_for(
        Duration::from_secs(30),
        "Prometheus scrapes both agents and the waypoint",
        || {
            let targets = prometheus.get("/api/v1/targets", &[]);
            let active = targets["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = active.len() == 3 && active.iter().all(|t| t["health"] == "up");
            if up {
                Ok(())
            } else {
                Err(targets.to_string())
            }
        },
    );
    // Traffic while Prometheus scrapes, twice, so that rates see it rise.
    l4_events(&mesh);
    l7_traffic(&mesh);
    std::thread::sleep(Duration::from_secs(3));
    l7_traffic(&mesh);
    let (queries, variables) = queries();
    let panels = queries.iter().filter(|q| q.evaluate).count();
    assert!(panels >= 40, "only {panels} panel queries found");
    wait_for(
        Duration::from_secs(30),
        "every dashboard query and rule works on what the mesh exports",
        || problems(&prometheus, &queries, &variables),
    );
}
