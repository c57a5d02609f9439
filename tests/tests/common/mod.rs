//! The two-node fixture the end-to-end tests share: a cluster with enrolled (`demo`) and
//! plain (`legacy`) pods, servers in every pod, a Service, and an agent per node.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use weft_harness::{
    manifests::{self, Manifests},
    Cluster, ClusterSpec, PodHandle, PodSpec,
};

pub const TESTPOD: &str = env!("CARGO_BIN_EXE_weft-testpod");
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub fn agent_bin() -> PathBuf {
    // The agent binary sits beside this crate's binaries in the same target folder.
    let agent = Path::new(TESTPOD).with_file_name("weft-agent");
    assert!(
        agent.exists(),
        "{} is missing: run `cargo xtask test` (it builds every binary first)",
        agent.display()
    );
    agent
}

pub struct Fixture {
    pub cluster: Cluster,
    pub manifests: Manifests,
    pub agents: Vec<u32>,
    pub logs: PathBuf,
    pub agent_args: Vec<String>,
}

impl Fixture {
    /// node0: demo/client, demo/server-b, legacy/plain2; node1: demo/server-a, legacy/plain.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Fixture::start`], with extra `weft-agent` flags for both agents.
    pub fn start_with(agent_args: &[&str]) -> Self {
        let spec = ClusterSpec {
            nodes: vec!["node0".into(), "node1".into()],
            pods: vec![
                PodSpec::new("demo", "client", "node0"),
                PodSpec::new("demo", "server-b", "node0"),
                PodSpec::new("legacy", "plain2", "node0"),
                PodSpec::new("demo", "server-a", "node1"),
                PodSpec::new("legacy", "plain", "node1"),
            ],
        };
        let cluster = Cluster::start(&spec).expect("cluster");
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(cluster.run_id().root_name());
        let manifests = Manifests::create(&base.join("manifests")).expect("manifest folder");
        let fixture = Self {
            cluster,
            manifests,
            agents: Vec::new(),
            logs: base.join("logs"),
            agent_args: agent_args.iter().map(ToString::to_string).collect(),
        };
        fixture.write_namespaces(true, false);
        let pods: String = fixture
            .cluster
            .pods
            .iter()
            .map(|p| manifests::pod(p, &[]))
            .collect::<Vec<_>>()
            .join("---\n");
        fixture.manifests.write("pods.yaml", &pods).expect("pods");
        let backends = [
            fixture.pod("demo", "server-a").ip,
            fixture.pod("demo", "server-b").ip,
        ];
        fixture
            .manifests
            .write(
                "services.yaml",
                &manifests::service("demo", "echo", VIP, 80, 9000, &backends),
            )
            .expect("services");
        for pod in &fixture.cluster.pods {
            fixture
                .cluster
                .spawn_in_pod(
                    pod,
                    TESTPOD,
                    &["serve", "0.0.0.0:9000", "--name", &pod.name],
                )
                .expect("server");
        }
        let mut fixture = fixture;
        for node in ["node0", "node1"] {
            fixture.start_agent(node);
        }
        fixture
    }

    pub fn write_namespaces(&self, demo: bool, legacy: bool) {
        let yaml = [
            manifests::namespace("demo", demo),
            manifests::namespace("legacy", legacy),
        ]
        .join("---\n");
        self.manifests
            .write("namespaces.yaml", &yaml)
            .expect("namespaces");
    }

    pub fn start_agent(&mut self, node: &str) -> u32 {
        let node = self.cluster.node(node).clone();
        let pid = self
            .cluster
            .start_agent_with(
                &node,
                &agent_bin(),
                &self.manifests.dir,
                &self.logs,
                &self.agent_args,
            )
            .unwrap_or_else(|e| panic!("{e:#}; log: {}", self.log(&node.name)));
        self.agents.push(pid);
        pid
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{node}.log"))).unwrap_or_default()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> &PodHandle {
        self.cluster.pod(namespace, name)
    }

    pub fn stat(&self, node: &str, name: &str) -> u64 {
        self.cluster.proxy_stat(self.cluster.node(node), name)
    }

    /// Runs `weft-testpod send` from `from` and returns its parsed report.
    pub fn send(&self, from: &PodHandle, to: &str, bytes: u64) -> Result<Report, String> {
        let out = self
            .cluster
            .run_in_pod(
                from,
                TESTPOD,
                &[
                    "--connect-timeout-ms",
                    "2000",
                    "send",
                    to,
                    &bytes.to_string(),
                ],
            )
            .expect("run testpod");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Report::parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// What `weft-testpod send` printed.
#[derive(Debug)]
pub struct Report {
    pub fields: std::collections::HashMap<String, String>,
    pub server: std::collections::HashMap<String, String>,
}

impl Report {
    pub fn parse(line: &str) -> Self {
        let (client, server) = line.trim().split_once(" server: ").expect("server part");
        let pairs = |s: &str| {
            s.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        Self {
            fields: pairs(client),
            server: pairs(server),
        }
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }

    /// Bytes echoed intact: same count and checksum both ways.
    pub fn assert_intact(&self, bytes: u64) {
        assert_eq!(self.get("sent"), bytes.to_string(), "{self:?}");
        assert_eq!(self.get("echoed"), bytes.to_string(), "{self:?}");
        assert_eq!(self.get("sent_sum"), self.get("echoed_sum"), "{self:?}");
        assert_eq!(self.server["received"], bytes.to_string(), "{self:?}");
        assert_eq!(self.server["sum"], self.get("sent_sum"), "{self:?}");
    }

    /// The address the server saw as its peer, without the port.
    pub fn server_saw(&self) -> String {
        self.server["peer"]
            .rsplit_once(':')
            .expect("ip:port")
            .0
            .to_owned()
    }
}
