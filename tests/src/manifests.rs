//! Local-mode manifests for a harness cluster: the same Kubernetes YAML a user would write,
//! with the local-mode annotations that tell the agent each pod's netns and cgroup.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{netns, PodHandle};

/// A manifest folder. Writes are atomic (write then rename), as `kubectl apply` would be.
#[derive(Clone, Debug)]
pub struct Manifests {
    pub dir: PathBuf,
}

impl Manifests {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn write(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join(file)).context("renaming manifest into place")
    }
}

pub fn namespace(name: &str, enrolled: bool) -> String {
    let label = if enrolled {
        "\n  labels:\n    weft.io/mesh: enabled"
    } else {
        ""
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{label}\n")
}

/// A pod whose service account is named after it.
pub fn pod(pod: &PodHandle, labels: &[(&str, &str)]) -> String {
    pod_with_account(pod, labels, &pod.name)
}

pub fn pod_with_account(pod: &PodHandle, labels: &[(&str, &str)], account: &str) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n",
        pod.name, pod.namespace
    );
    if !labels.is_empty() {
        yaml.push_str("  labels:\n");
        for (k, v) in labels {
            let _ = writeln!(yaml, "    {k}: {v}");
        }
    }
    let _ = write!(
        yaml,
        "  annotations:\n    weft.io/netns: {}\n    weft.io/cgroup: {}\nspec:\n  nodeName: {}\n  serviceAccountName: {}\n  containers:\n  - name: main\n    image: local\nstatus:\n  podIP: {}\n",
        netns::path(&pod.netns).display(),
        pod.cgroup.display(),
        pod.node,
        account,
        pod.ip
    );
    yaml
}

/// A Service with one named port and its EndpointSlice over `backends`.
pub fn service(
    namespace: &str,
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    target_port: u16,
    backends: &[Ipv4Addr],
) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  clusterIP: {vip}\n  ports:\n  - name: main\n    port: {port}\n    targetPort: {target_port}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: main\n  port: {target_port}\nendpoints:\n"
    );
    for backend in backends {
        let _ = writeln!(
            yaml,
            "- addresses: [\"{backend}\"]\n  conditions:\n    ready: true"
        );
    }
    yaml
}

/// One port of a Service: its name, port, target port and `appProtocol`, if any.
#[derive(Clone, Copy, Debug)]
pub struct ServicePort<'a> {
    pub name: &'a str,
    pub port: u16,
    pub target_port: u16,
    pub app_protocol: Option<&'a str>,
}

/// A Service with several named ports and its EndpointSlice over `backends`, whose ports
/// carry the same names (the target ports).
pub fn service_ports(
    namespace: &str,
    name: &str,
    vip: Ipv4Addr,
    ports: &[ServicePort<'_>],
    backends: &[Ipv4Addr],
) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  clusterIP: {vip}\n  ports:\n"
    );
    for p in ports {
        let _ = writeln!(yaml, "  - name: {}", p.name);
        if let Some(protocol) = p.app_protocol {
            let _ = writeln!(yaml, "    appProtocol: {protocol}");
        }
        let _ = writeln!(
            yaml,
            "    port: {}\n    targetPort: {}",
            p.port, p.target_port
        );
    }
    let _ = write!(
        yaml,
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n"
    );
    for p in ports {
        let _ = writeln!(yaml, "- name: {}\n  port: {}", p.name, p.target_port);
    }
    yaml.push_str("endpoints:\n");
    for backend in backends {
        let _ = writeln!(
            yaml,
            "- addresses: [\"{backend}\"]\n  conditions:\n    ready: true"
        );
    }
    yaml
}

/// The SPEC playground's Service ports: `http` 80 → 8080 and `grpc` 9090 (h2c); the
/// per-version Services (`version`) also `http-alt` 8080 → 8080.
pub fn playground_ports(version: bool) -> &'static [ServicePort<'static>] {
    const fn port(
        name: &'static str,
        port: u16,
        target_port: u16,
        protocol: &'static str,
    ) -> ServicePort<'static> {
        ServicePort {
            name,
            port,
            target_port,
            app_protocol: Some(protocol),
        }
    }
    const ECHO: &[ServicePort<'static>] = &[
        port("http", 80, 8080, "http"),
        port("grpc", 9090, 9090, "kubernetes.io/h2c"),
    ];
    const VERSION: &[ServicePort<'static>] = &[
        port("http", 80, 8080, "http"),
        port("http-alt", 8080, 8080, "http"),
        port("grpc", 9090, 9090, "kubernetes.io/h2c"),
    ];
    if version {
        VERSION
    } else {
        ECHO
    }
}

/// The SPEC playground's Services in namespace `demo`: `echo` over both echo pods (labelled
/// to use the waypoint `waypoint` when `through_waypoint`), `echo-v1` and `echo-v2` over one
/// each, at `vips` in that order, with [`playground_ports`].
pub fn playground_services(
    vips: [Ipv4Addr; 3],
    (v1, v2): (Ipv4Addr, Ipv4Addr),
    through_waypoint: bool,
) -> String {
    let mut echo = service_ports("demo", "echo", vips[0], playground_ports(false), &[v1, v2]);
    if through_waypoint {
        echo = echo.replacen(
            "  name: echo\n  namespace: demo\nspec:",
            "  name: echo\n  namespace: demo\n  labels:\n    weft.io/use-waypoint: waypoint\nspec:",
            1,
        );
    }
    [
        echo,
        service_ports("demo", "echo-v1", vips[1], playground_ports(true), &[v1]),
        service_ports("demo", "echo-v2", vips[2], playground_ports(true), &[v2]),
    ]
    .join("---\n")
}
