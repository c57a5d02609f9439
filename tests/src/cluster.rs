//! A simulated cluster: nodes joined by a fabric, pods attached to their node, addresses and
//! routes as a simple bridge CNI would set them, and every pod in its own cgroup.
//!
//! Layout for node `i` (0-based) and its pod `j`:
//! - fabric netns `<prefix>fabric` holds bridge `weft-fabric`; node `i` is 172.30.0.(10+i)/24;
//! - node netns `<prefix><node>` forwards, holds bridge `weft-cbr0` = 10.244.(i+1).1/24 and a
//!   route to every other node's pod CIDR via that node's fabric address;
//! - pod netns `<prefix><namespace>-<pod>` has `weft-eth0` = 10.244.(i+1).(10+j)/24, default
//!   route via its node's bridge; its cgroup is `<cgroup2>/<run root>/weft-<namespace>-<pod>`.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
};

use anyhow::Context as _;

use crate::{
    cgroup, netns,
    run::{self, RunId},
};

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    pub nodes: Vec<String>,
    pub pods: Vec<PodSpec>,
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub node: String,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str, node: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            node: node.into(),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeHandle {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    pub gateway: Ipv4Addr,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PodHandle {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub cgroup: PathBuf,
}

/// A running simulated cluster. Dropping it removes everything it made.
#[derive(Debug)]
pub struct Cluster {
    run: RunId,
    pub nodes: Vec<NodeHandle>,
    pub pods: Vec<PodHandle>,
    fabric: String,
    children: Mutex<Vec<Child>>,
    keep: bool,
}

const FABRIC_BRIDGE: &str = "weft-fabric";
const POD_BRIDGE: &str = "weft-cbr0";
const POD_IFACE: &str = "weft-eth0";
const NODE_UPLINK: &str = "weft-uplink";

impl Cluster {
    /// Builds a cluster for a test run with fresh names, after sweeping dead runs' leftovers.
    pub fn start(spec: &ClusterSpec) -> anyhow::Result<Self> {
        run::sweep_dead_runs();
        Self::build(RunId::fresh()?, spec)
    }

    /// Builds the demo playground with its fixed names (`weft-node-a`), replacing any leftover.
    pub fn start_demo(spec: &ClusterSpec) -> anyhow::Result<Self> {
        remove_named(&RunId::demo(), spec);
        Self::build(RunId::demo(), spec)
    }

    fn build(run: RunId, spec: &ClusterSpec) -> anyhow::Result<Self> {
        ensure_bpffs()?;
        let prefix = run.prefix();
        let mut cluster = Self {
            fabric: format!("{prefix}fabric"),
            run,
            nodes: Vec::new(),
            pods: Vec::new(),
            children: Mutex::new(Vec::new()),
            keep: false,
        };
        // From here on, a failure drops `cluster`, which removes what was made so far.
        cluster.build_fabric(spec)?;
        cluster.build_pods(spec)?;
        Ok(cluster)
    }

    fn build_fabric(&mut self, spec: &ClusterSpec) -> anyhow::Result<()> {
        let prefix = self.run.prefix();
        netns::add(&self.fabric)?;
        netns::ip(
            &self.fabric,
            &["link", "add", FABRIC_BRIDGE, "type", "bridge"],
        )?;
        netns::ip(&self.fabric, &["link", "set", FABRIC_BRIDGE, "up"])?;
        for (i, name) in spec.nodes.iter().enumerate() {
            let index = u8::try_from(i).context("too many nodes")?;
            let ns = format!("{prefix}{name}");
            netns::add(&ns)?;
            let fabric_port = format!("weft-n{i}");
            netns::ip(
                &self.fabric,
                &[
                    "link",
                    "add",
                    &fabric_port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    NODE_UPLINK,
                    "netns",
                    &ns,
                ],
            )?;
            netns::ip(
                &self.fabric,
                &["link", "set", &fabric_port, "master", FABRIC_BRIDGE, "up"],
            )?;
            let ip = Ipv4Addr::new(172, 30, 0, 10 + index);
            netns::ip(
                &ns,
                &["addr", "add", &format!("{ip}/24"), "dev", NODE_UPLINK],
            )?;
            netns::ip(&ns, &["link", "set", NODE_UPLINK, "up"])?;
            netns::ip(&ns, &["link", "set", "lo", "up"])?;
            let gateway = Ipv4Addr::new(10, 244, index + 1, 1);
            netns::ip(&ns, &["link", "add", POD_BRIDGE, "type", "bridge"])?;
            netns::ip(
                &ns,
                &["addr", "add", &format!("{gateway}/24"), "dev", POD_BRIDGE],
            )?;
            netns::ip(&ns, &["link", "set", POD_BRIDGE, "up"])?;
            netns::sysctl(&ns, "net.ipv4.ip_forward", "1")?;
            self.nodes.push(NodeHandle {
                name: name.clone(),
                netns: ns,
                ip,
                pod_cidr: format!("10.244.{}.0/24", index + 1),
                gateway,
            });
        }
        for node in &self.nodes {
            for peer in self.nodes.iter().filter(|p| p.name != node.name) {
                netns::ip(
                    &node.netns,
                    &["route", "add", &peer.pod_cidr, "via", &peer.ip.to_string()],
                )?;
            }
        }
        Ok(())
    }

    fn build_pods(&mut self, spec: &ClusterSpec) -> anyhow::Result<()> {
        let prefix = self.run.prefix();
        let cgroup_root = cgroup::run_parent(&self.run).context("no cgroup v2 mount")?;
        cgroup::create(&cgroup_root)?;
        for pod in &spec.pods {
            let node_index = self
                .nodes
                .iter()
                .position(|n| n.name == pod.node)
                .with_context(|| {
                    format!(
                        "pod {}/{} names unknown node {}",
                        pod.namespace, pod.name, pod.node
                    )
                })?;
            let node = self.nodes[node_index].clone();
            let on_node = self.pods.iter().filter(|p| p.node == pod.node).count();
            let host = u8::try_from(10 + on_node).context("too many pods on one node")?;
            let octets = node.gateway.octets();
            let ip = Ipv4Addr::new(octets[0], octets[1], octets[2], host);
            let ns = format!("{prefix}{}-{}", pod.namespace, pod.name);
            netns::add(&ns)?;
            let host_side = format!("weft-p{on_node}");
            netns::ip(
                &node.netns,
                &[
                    "link", "add", &host_side, "type", "veth", "peer", "name", POD_IFACE, "netns",
                    &ns,
                ],
            )?;
            netns::ip(
                &node.netns,
                &["link", "set", &host_side, "master", POD_BRIDGE, "up"],
            )?;
            netns::ip(&ns, &["addr", "add", &format!("{ip}/24"), "dev", POD_IFACE])?;
            netns::ip(&ns, &["link", "set", POD_IFACE, "up"])?;
            netns::ip(&ns, &["link", "set", "lo", "up"])?;
            netns::ip(
                &ns,
                &["route", "add", "default", "via", &node.gateway.to_string()],
            )?;
            let cgroup_path = cgroup_root.join(format!("weft-{}-{}", pod.namespace, pod.name));
            cgroup::create(&cgroup_path)?;
            self.pods.push(PodHandle {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                node: pod.node.clone(),
                netns: ns,
                ip,
                cgroup: cgroup_path,
            });
        }
        Ok(())
    }

    /// The netns holding the fabric bridge (`weft-fabric`) between the nodes.
    pub fn fabric_netns(&self) -> &str {
        &self.fabric
    }

    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// The bpffs folder this run may pin under.
    pub fn bpffs_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(self.run.root_name())
    }

    pub fn node(&self, name: &str) -> &NodeHandle {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn pod(&self, namespace: &str, name: &str) -> &PodHandle {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
    }

    /// A command that runs `program args…` inside the pod: its netns and its cgroup. The shell
    /// joins the cgroup before it execs, so the program is attributed to the pod from its
    /// first instruction.
    pub fn pod_command(pod: &PodHandle, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" || exit 97; shift; exec ip netns exec "$@""#)
            .arg("weft-pod")
            .arg(&pod.cgroup)
            .arg(&pod.netns)
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs a program in the pod to completion.
    pub fn run_in_pod(
        &self,
        pod: &PodHandle,
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        Self::pod_command(pod, program, args)
            .output()
            .with_context(|| format!("running {program} in pod {}/{}", pod.namespace, pod.name))
    }

    /// Runs a program in the pod's netns only, outside its cgroup: traffic from the pod's address
    /// that cgroup programs must not see.
    pub fn run_in_netns_only(
        &self,
        pod: &PodHandle,
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &pod.netns, program])
            .args(args)
            .output()
            .with_context(|| format!("running {program} in netns {}", pod.netns))
    }

    /// Starts a long-running program in the pod; the cluster stops it by PID on drop.
    pub fn spawn_in_pod(
        &self,
        pod: &PodHandle,
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<u32> {
        // No inherited stdout/stderr: a long-lived pod process must not hold the caller's pipes.
        let child = Self::pod_command(pod, program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in pod {}/{}", pod.namespace, pod.name))?;
        Ok(self.track(child))
    }

    /// Like [`Cluster::spawn_in_pod`], with `env` set and stdout and stderr appended to `log`
    /// (a waypoint, whose log the test reads).
    pub fn spawn_in_pod_logged(
        &self,
        pod: &PodHandle,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: std::fs::File,
    ) -> anyhow::Result<u32> {
        let child = Self::pod_command(pod, program, args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program} in pod {}/{}", pod.namespace, pod.name))?;
        Ok(self.track(child))
    }

    /// Starts a program in a node's netns (e.g. the agent); stopped by PID on drop.
    pub fn spawn_in_node(&self, node: &NodeHandle, command: &Command) -> anyhow::Result<u32> {
        self.spawn_in_node_with(node, command, None)
    }

    /// Like [`Cluster::spawn_in_node`], with stdout and stderr appended to `log`.
    pub fn spawn_in_node_logged(
        &self,
        node: &NodeHandle,
        command: &Command,
        log: std::fs::File,
    ) -> anyhow::Result<u32> {
        self.spawn_in_node_with(node, command, Some(log))
    }

    fn spawn_in_node_with(
        &self,
        node: &NodeHandle,
        command: &Command,
        log: Option<std::fs::File>,
    ) -> anyhow::Result<u32> {
        let program = command.get_program().to_owned();
        let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
        // nsenter switches only the network namespace; `ip netns exec` would also remount /sys
        // and hide the cgroup2 and bpffs mounts the agent needs.
        let mut wrapped = Command::new("nsenter");
        wrapped
            .arg(format!("--net={}", netns::path(&node.netns).display()))
            .arg("--")
            .arg(program)
            .args(args);
        for (key, value) in command.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        if let Some(log) = log {
            wrapped.stdout(log.try_clone()?).stderr(log);
        }
        let child = wrapped
            .stdin(Stdio::null())
            .spawn()
            .context("starting a process in a node")?;
        Ok(self.track(child))
    }

    /// Whether a process this cluster started has exited (reaping it if so).
    pub fn has_exited(&self, pid: u32) -> bool {
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    fn track(&self, child: Child) -> u32 {
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(child);
        pid
    }

    /// Sends `signal` to one process this cluster started, by PID, without waiting for it.
    pub fn signal(&self, pid: u32, signal: nix::sys::signal::Signal) {
        let children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if children.iter().any(|c| c.id() == pid) {
            #[expect(clippy::cast_possible_wrap, reason = "PIDs fit in i32")]
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Stops one process this cluster started, by PID, and reaps it.
    pub fn stop(&self, pid: u32, signal: nix::sys::signal::Signal) {
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pos) = children.iter().position(|c| c.id() == pid) {
            let mut child = children.remove(pos);
            #[expect(clippy::cast_possible_wrap, reason = "PIDs fit in i32")]
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
            let _ = child.wait();
        }
    }

    /// Leaves everything running when dropped (for `cargo xtask demo up`).
    pub fn keep_running(mut self) -> Vec<u32> {
        self.keep = true;
        let children = std::mem::take(
            &mut *self
                .children
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        children.iter().map(Child::id).collect()
    }

    fn teardown(&mut self) {
        for mut child in self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let names: Vec<String> = self
            .pods
            .iter()
            .map(|p| p.netns.clone())
            .chain(self.nodes.iter().map(|n| n.netns.clone()))
            .chain(std::iter::once(self.fabric.clone()))
            .collect();
        remove_netns(&names);
        if let Some(root) = cgroup::run_parent(&self.run) {
            cgroup::remove_tree(&root);
        }
        let pins = self.bpffs_dir();
        if pins.exists() {
            let _ = std::fs::remove_dir_all(&pins);
        }
        self.run.release();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

fn remove_netns(names: &[String]) {
    let existing = netns::list();
    for name in names.iter().filter(|n| existing.contains(n)) {
        netns::kill_pids_in(name);
        if let Err(e) = netns::delete(name) {
            eprintln!("harness: {e:#}");
        }
    }
}

/// Removes what a cluster of this spec and run would have made (used by `demo down`), stopping
/// the processes left in its namespaces.
pub fn remove_named(run: &RunId, spec: &ClusterSpec) {
    let prefix = run.prefix();
    let names: Vec<String> = spec
        .pods
        .iter()
        .map(|p| format!("{prefix}{}-{}", p.namespace, p.name))
        .chain(spec.nodes.iter().map(|n| format!("{prefix}{n}")))
        .chain(std::iter::once(format!("{prefix}fabric")))
        .collect();
    remove_netns(&names);
    if let Some(root) = cgroup::run_parent(run) {
        cgroup::remove_tree(&root);
    }
}

/// Mounts bpffs at /sys/fs/bpf when the machine has not (as systemd would at boot).
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        "/sys/fs/bpf",
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mounting bpffs at /sys/fs/bpf")
}
