//! The waypoint fixture: a two-node cluster with echo servers behind Services that use the
//! waypoint `demo/waypoint` (and some that do not), the Services' routes, an agent per node and
//! the waypoint itself, all from one manifest folder. The waypoint tests and the bench share it.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    eventually,
    manifests::{self, Manifests},
    Cluster, ClusterSpec, PodHandle, PodSpec,
};

/// `demo/echo`: through the waypoint, routed by [`ROUTES`].
pub const ECHO: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const ECHO_V1: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
pub const ECHO_V2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);
/// `demo/direct`: echo-v1 without the waypoint label, so L4.
pub const DIRECT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 23);
pub const MIRROR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 24);
/// `demo/retried`: echo-v1 and the broken `flaky` (every answer 503), retried on 503.
pub const RETRIED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 25);
/// `demo/ws`: port 80 to echo-v1's 8090, where a test runs a WebSocket server.
pub const WS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 26);
/// `demo/grpc`: port 50051 (`grpc`) to echo-v2's 50051, where a test runs a grpcio server.
pub const GRPC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 27);
/// `demo/tcp`: port 9000 with `appProtocol: tcp` to echo-v1's 9000 (a byte server).
pub const TCP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 28);
/// `demo/raw`: the same byte server on a port named `main`, so the waypoint sniffs it.
pub const RAW: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 29);
/// `demo/missing`: routed to a backend Service that does not exist.
pub const MISSING: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// `demo/bench`: echo-v1 through the waypoint with no route (the bench's waypoint path).
pub const BENCH: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
/// `demo/refusing`: an endpoint where nothing listens (the waypoint answers 502).
pub const REFUSING: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 32);
/// `demo/empty`: no ready endpoint (the waypoint answers 503).
pub const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 33);

/// `demo/resilient`: echo-v1 and echo-v2 through the waypoint with no route, for the
/// resilience tests' TrafficPolicies.
pub const RESILIENT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 34);
/// `demo/hashed`: echo-v1, echo-v2 and echo-v3 through the waypoint (in `hashed.yaml`, so a
/// test can take an endpoint away).
pub const HASHED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 35);

/// `demo/l4-retry`: echo-v1 and `closed` (an enrolled pod where nothing listens) at L4, with
/// no waypoint: the agent's connect retry and passive health.
pub const L4_RETRY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 36);

/// `demo/l4-local`: echo-v2 (node0, zone-a) and echo-v1 (node1, zone-b) at L4, for the
/// agent's locality preference.
pub const L4_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 37);

/// The fixture's nodes: node0 in zone-a, node1 in zone-b, both in region r1.
/// `demo/guarded`: echo-v3 (labelled `app: guarded`) behind the waypoint, for
/// AuthorizationPolicy and RequestAuthentication at L7.
pub const GUARDED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 38);

pub const NODES: &str = "apiVersion: v1
kind: Node
metadata:
  name: node0
  labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: zone-a}
---
apiVersion: v1
kind: Node
metadata:
  name: node1
  labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: zone-b}
";

/// The Gateway and every route of the fixture.
pub const ROUTES: &str = include_str!("waypoint_routes.yaml");

/// Waits up to 10 s for the waypoint in `pod` to answer its readiness endpoint.
pub fn wait_until_ready(pod: &PodHandle) {
    eventually(Duration::from_secs(10), "the waypoint is ready", || {
        crate::netns::exec(
            &pod.netns,
            &[
                "curl",
                "-sf",
                "--max-time",
                "1",
                "http://127.0.0.1:15021/healthz/ready",
            ],
        )
        .is_ok()
    });
}

/// The value of one series (`name{labels}` as exposed) in a metrics text, 0 while it does
/// not exist; several series read from one text are one moment's.
pub fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// What a test adds to the mesh it starts: the waypoint's environment (e.g. `OTEL_*`) and
/// flags for both agents.
#[derive(Debug, Default, Clone)]
pub struct Extras {
    pub waypoint_env: Vec<(String, String)>,
    pub agent_flags: Vec<String>,
}

/// The running fixture; dropping it stops everything.
#[derive(Debug)]
pub struct Mesh {
    pub cluster: Cluster,
    pub manifests: Manifests,
    pub logs: PathBuf,
    /// The waypoint process, for its memory figures.
    pub waypoint_pid: u32,
    bins: PathBuf,
}

/// A Service in `demo` with one port, to `backends`, labelled to use the waypoint if asked.
/// `port_line` replaces the port's `name: main` (for `appProtocol` or another name).
pub fn service(
    name: &str,
    vip: Ipv4Addr,
    (port, target): (u16, u16),
    backends: &[Ipv4Addr],
    waypoint: bool,
    port_line: Option<&str>,
) -> String {
    let mut yaml = manifests::service("demo", name, vip, port, target, backends);
    if waypoint {
        yaml = yaml.replacen(
            &format!("  name: {name}\n  namespace: demo\nspec:"),
            &format!("  name: {name}\n  namespace: demo\n  labels:\n    weft.io/use-waypoint: waypoint\nspec:"),
            1,
        );
    }
    if let Some(line) = port_line {
        yaml = yaml.replacen("  - name: main\n", &format!("  - {line}\n"), 1);
    }
    yaml
}

/// Every Service of the fixture and its EndpointSlice.
fn services(cluster: &Cluster) -> String {
    let ip = |name: &str| cluster.pod("demo", name).ip;
    let (v1, v2) = (ip("echo-v1"), ip("echo-v2"));
    [
        service("echo", ECHO, (80, 8080), &[v1, v2], true, None),
        service("echo-v1", ECHO_V1, (80, 8080), &[v1], false, None),
        service("echo-v2", ECHO_V2, (80, 8080), &[v2], false, None),
        service("direct", DIRECT, (80, 8080), &[v1], false, None),
        service(
            "echo-mirror",
            MIRROR,
            (80, 8080),
            &[ip("mirror")],
            false,
            None,
        ),
        service(
            "retried",
            RETRIED,
            (80, 8080),
            &[v1, ip("flaky")],
            true,
            None,
        ),
        service("ws", WS, (80, 8090), &[v1], true, Some("name: http-ws")),
        service(
            "grpc",
            GRPC,
            (50051, 50051),
            &[v2],
            true,
            Some("name: grpc"),
        ),
        service(
            "tcp",
            TCP,
            (9000, 9000),
            &[v1],
            true,
            Some("name: bytes\n    appProtocol: tcp"),
        ),
        service("raw", RAW, (9000, 9000), &[v1], true, None),
        service("missing", MISSING, (80, 8080), &[v1], true, None),
        service("bench", BENCH, (80, 8080), &[v1], true, Some("name: http")),
        service(
            "refusing",
            REFUSING,
            (80, 9999),
            &[v1],
            true,
            Some("name: http"),
        ),
        service("empty", EMPTY, (80, 8080), &[], true, Some("name: http")),
        service(
            "l4-retry",
            L4_RETRY,
            (80, 8080),
            &[v1, ip("closed")],
            false,
            Some("name: http"),
        ),
        service(
            "l4-local",
            L4_LOCAL,
            (80, 8080),
            &[v1, v2],
            false,
            Some("name: http"),
        ),
        service(
            "guarded",
            GUARDED,
            (80, 8080),
            &[ip("echo-v3")],
            true,
            Some("name: http"),
        ),
        service(
            "resilient",
            RESILIENT,
            (80, 8080),
            &[v1, v2],
            true,
            Some("name: http"),
        ),
    ]
    .join("---\n")
}

/// `demo/hashed` with `endpoints`.
pub fn hashed_service(endpoints: &[Ipv4Addr]) -> String {
    service(
        "hashed",
        HASHED,
        (80, 8080),
        endpoints,
        true,
        Some("name: http"),
    )
}

impl Mesh {
    /// Starts the fixture with the binaries in `bins` (the test target folder); the waypoint
    /// logs at debug, for tests to read.
    pub fn start(bins: &Path, tmp: &Path) -> anyhow::Result<Self> {
        Self::start_logging(bins, tmp, "info,weft_waypoint=debug")
    }

    /// [`Mesh::start`] with the waypoint's `RUST_LOG` (the bench runs it at the default, `info`).
    pub fn start_logging(bins: &Path, tmp: &Path, rust_log: &str) -> anyhow::Result<Self> {
        Self::start_with(bins, tmp, rust_log, &Extras::default())
    }

    /// Like [`Mesh::start_logging`], with what `extras` adds to the waypoint and the agents.
    pub fn start_with(
        bins: &Path,
        tmp: &Path,
        rust_log: &str,
        extras: &Extras,
    ) -> anyhow::Result<Self> {
        let spec = ClusterSpec {
            nodes: vec!["node0".into(), "node1".into()],
            pods: vec![
                PodSpec::new("demo", "client", "node0"),
                PodSpec::new("demo", "echo-v2", "node0"),
                PodSpec::new("demo", "echo-v1", "node1"),
                PodSpec::new("demo", "echo-v3", "node0"),
                PodSpec::new("demo", "waypoint", "node1"),
                PodSpec::new("demo", "mirror", "node0"),
                PodSpec::new("demo", "flaky", "node1"),
                PodSpec::new("demo", "closed", "node1"),
                // Outside the mesh: the bench's no-mesh baseline.
                PodSpec::new("legacy", "plain-client", "node0"),
                PodSpec::new("legacy", "plain-echo", "node1"),
            ],
        };
        let cluster = Cluster::start(&spec)?;
        let base = tmp.join(cluster.run_id().root_name());
        let manifests = Manifests::create(&base.join("manifests"))?;
        let logs = base.join("logs");
        std::fs::create_dir_all(&logs)?;
        manifests.write(
            "namespaces.yaml",
            &[
                manifests::namespace("demo", true),
                manifests::namespace("legacy", false),
            ]
            .join("---\n"),
        )?;
        let pods: Vec<String> = cluster
            .pods
            .iter()
            .map(|p| {
                let labels: &[(&str, &str)] = match p.name.as_str() {
                    "waypoint" => &[("gateway.networking.k8s.io/gateway-name", "waypoint")],
                    "echo-v3" => &[("app", "guarded")],
                    _ => &[],
                };
                manifests::pod(p, labels)
            })
            .collect();
        manifests.write("pods.yaml", &pods.join("---\n"))?;
        let services = services(&cluster);
        manifests.write("services.yaml", &services)?;
        let ip = |name: &str| cluster.pod("demo", name).ip;
        let hashed = [ip("echo-v1"), ip("echo-v2"), ip("echo-v3")];
        manifests.write("hashed.yaml", &hashed_service(&hashed))?;
        manifests.write("routes.yaml", ROUTES)?;
        manifests.write("nodes.yaml", NODES)?;
        let mut mesh = Self {
            cluster,
            manifests,
            logs,
            waypoint_pid: 0,
            bins: bins.to_owned(),
        };
        mesh.spawn_backends()?;
        for node in ["node0", "node1"] {
            let node = mesh.cluster.node(node).clone();
            mesh.cluster.start_agent_with(
                &node,
                &mesh.bin("weft-agent")?,
                &mesh.manifests.dir,
                &mesh.logs,
                &extras.agent_flags,
            )?;
        }
        mesh.waypoint_pid = mesh.spawn_waypoint(rust_log, &extras.waypoint_env)?;
        wait_until_ready(&mesh.pod("waypoint"));
        Ok(mesh)
    }

    /// A binary of this build.
    pub fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bins.join(name);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: run `cargo xtask test` (it builds every binary first)",
            path.display()
        );
        Ok(path)
    }

    pub fn pod(&self, name: &str) -> PodHandle {
        self.cluster.pod("demo", name).clone()
    }

    /// A pod of namespace `legacy`, outside the mesh.
    pub fn plain_pod(&self, name: &str) -> PodHandle {
        self.cluster.pod("legacy", name).clone()
    }

    /// The echo servers (echo-v1, echo-v2, flaky answering 503, the mirror counted in
    /// `mirror.log`) and echo-v1's byte server on 9000.
    fn spawn_backends(&self) -> anyhow::Result<()> {
        let echo = self.bin("weft-echo")?;
        let echo = echo.to_str().context("path")?;
        for (pod, args) in [
            ("echo-v1", &["0.0.0.0:8080", "echo-v1"][..]),
            ("echo-v2", &["0.0.0.0:8080", "echo-v2"]),
            ("echo-v3", &["0.0.0.0:8080", "echo-v3"]),
            ("flaky", &["0.0.0.0:8080", "flaky", "503"]),
        ] {
            let log = std::fs::File::create(self.logs.join(format!("{pod}.log")))?;
            self.cluster
                .spawn_in_pod_logged(&self.pod(pod), echo, args, &[], log)?;
        }
        self.cluster.spawn_in_pod(
            &self.plain_pod("plain-echo"),
            echo,
            &["0.0.0.0:8080", "plain-echo"],
        )?;
        let log = std::fs::File::create(self.logs.join("mirror.log"))?;
        self.cluster.spawn_in_pod_logged(
            &self.pod("mirror"),
            echo,
            &["0.0.0.0:8080", "mirror"],
            &[],
            log,
        )?;
        let testpod = self.bin("weft-testpod")?;
        self.cluster.spawn_in_pod(
            &self.pod("echo-v1"),
            testpod.to_str().context("path")?,
            &["serve", "0.0.0.0:9000", "--name", "bytes"],
        )?;
        Ok(())
    }

    /// The waypoint (its log in `waypoint.log`), from the same manifest folder and CA as the
    /// agents.
    fn spawn_waypoint(&self, rust_log: &str, env: &[(String, String)]) -> anyhow::Result<u32> {
        let mut env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("RUST_LOG", rust_log));
        let ca_dir = self.logs.join("ca");
        let log = std::fs::File::create(self.logs.join("waypoint.log"))?;
        self.cluster.spawn_in_pod_logged(
            &self.pod("waypoint"),
            self.bin("weft-waypoint")?.to_str().context("path")?,
            &[
                "--manifests",
                self.manifests.dir.to_str().context("path")?,
                "--namespace",
                "demo",
                "--name",
                "waypoint",
                "--ca-dir",
                ca_dir.to_str().context("path")?,
            ],
            &env,
            log,
        )
    }

    /// A field of the waypoint's `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`: its peak).
    pub fn waypoint_memory_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.waypoint_pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{field} in the waypoint's /proc status"))
    }

    /// A path of the waypoint's admin port, fetched with curl in its netns.
    pub fn waypoint_admin(&self, path: &str) -> String {
        self.waypoint_admin_at(15000, path)
    }

    /// One series of the waypoint's metrics now, 0 while it does not exist.
    pub fn waypoint_metric(&self, series: &str) -> u64 {
        metric_value(&self.waypoint_admin_at(15020, "/metrics"), series)
    }

    /// A path of one of the waypoint's ports (admin 15000, metrics 15020, readiness 15021).
    pub fn waypoint_admin_at(&self, port: u16, path: &str) -> String {
        let out = self
            .cluster
            .run_in_netns_only(
                &self.pod("waypoint"),
                "curl",
                &[
                    "-s",
                    "--max-time",
                    "5",
                    &format!("http://127.0.0.1:{port}{path}"),
                ],
            )
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The waypoint's log so far.
    pub fn waypoint_log(&self) -> String {
        std::fs::read_to_string(self.logs.join("waypoint.log")).unwrap_or_default()
    }

    /// `curl` from demo/client; returns the body (and the status line with `-i`). Panics
    /// with the waypoint's log when curl fails.
    pub fn curl(&self, args: &[&str]) -> String {
        let mut full = vec!["-s", "--max-time", "5"];
        full.extend_from_slice(args);
        let out = self
            .cluster
            .run_in_pod(&self.pod("client"), "curl", &full)
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}\nwaypoint log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.waypoint_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The path of a Python helper in `tests/py`.
    pub fn python_helper(name: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("py")
            .join(name)
            .to_string_lossy()
            .into_owned()
    }

    /// Starts the grpcio echo server (`tests/py/grpc_echo.py`) in echo-v2, the endpoint of
    /// `demo/grpc`.
    pub fn start_grpc_echo(&self) -> anyhow::Result<()> {
        let grpc = Self::python_helper("grpc_echo.py");
        self.cluster.spawn_in_pod(
            &self.pod("echo-v2"),
            "python3",
            &[&grpc, "serve", "0.0.0.0:50051"],
        )?;
        Ok(())
    }

    /// Runs the grpcio client's `chaos` mode from demo/client against `demo/grpc` (one call
    /// with `x-chaos: 1`, one without) until it runs, and returns what it saw.
    pub fn grpc_chaos(&self) -> serde_json::Value {
        let grpc = Self::python_helper("grpc_echo.py");
        let client = self.pod("client");
        let mut seen = serde_json::Value::Null;
        eventually(Duration::from_secs(15), "the gRPC client ran", || {
            let out = self
                .cluster
                .run_in_pod(
                    &client,
                    "python3",
                    &[&grpc, "chaos", &format!("{GRPC}:50051")],
                )
                .expect("grpc client");
            seen = serde_json::from_slice(&out.stdout).unwrap_or_default();
            out.status.success()
        });
        seen
    }

    /// `weftctl --admin <the waypoint's admin>` with `args`, run in the waypoint's netns.
    pub fn weftctl(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .cluster
            .run_in_netns_only(
                &self.pod("waypoint"),
                self.bin("weftctl")
                    .expect("weftctl")
                    .to_str()
                    .expect("path"),
                args,
            )
            .expect("weftctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}
