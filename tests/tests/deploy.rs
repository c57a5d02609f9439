//! `deploy/`: every overlay renders (kubectl's built-in kustomize, offline) and validates against
//! the Kubernetes schemas (kubernetes-validate, strict), and the rendered DaemonSet and CA
//! Deployment give the binaries what their configuration names: every WEFT_* variable is one
//! the binary reads, every path it names is mounted from the right volume.

use std::{path::Path, process::Command};

use serde_yaml::Value;

/// The agent binary, beside this crate's binaries (`cargo xtask test` builds them all first).
fn agent_bin() -> std::path::PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_weft-testpod")).with_file_name("weft-agent");
    assert!(
        agent.exists(),
        "{} is missing: run `cargo xtask test`",
        agent.display()
    );
    agent
}

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The overlay rendered by kubectl's built-in kustomize, as YAML text.
fn render_text(overlay: &Path) -> Vec<u8> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(overlay)
        .output()
        .expect("kubectl is missing: `cargo xtask setup` installs it");
    assert!(
        out.status.success(),
        "kustomize {}: {}",
        overlay.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn render(overlay: &str) -> Vec<Value> {
    let text = String::from_utf8(render_text(&deploy_dir().join("overlays").join(overlay)))
        .expect("utf-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("rendered YAML"))
        .collect()
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn var(vars: &[(String, String)], name: &str) -> String {
    vars.iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| panic!("{name} is not set"), |(_, v)| v.clone())
}

/// The volume mounted at the deepest mount path holding `path`, and whether it is read-only.
fn mount_of<'a>(pod: &'a Value, container: &Value, path: &str) -> (&'a Value, bool) {
    let mount = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap_or("\0");
            path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len())
        .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
    let volume = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("mount {:?} names no volume", mount["name"]));
    (volume, mount["readOnly"].as_bool().unwrap_or(false))
}

/// The agent's drain deadline in seconds: `--drain-timeout-secs` on its command line, else
/// `WEFT_DRAIN_TIMEOUT_SECS`, else the binary's default.
fn drain_secs(container: &Value) -> u64 {
    let words: Vec<&str> = ["command", "args"]
        .iter()
        .flat_map(|key| container[*key].as_sequence().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let flag = words.iter().enumerate().find_map(|(i, word)| {
        if *word == "--drain-timeout-secs" {
            words.get(i + 1).copied()
        } else {
            word.strip_prefix("--drain-timeout-secs=")
        }
    });
    let configured = flag.map(str::to_owned).or_else(|| {
        env(container)
            .into_iter()
            .find(|(name, _)| name == "WEFT_DRAIN_TIMEOUT_SECS")
            .map(|(_, value)| value)
    });
    configured.map_or(
        weft_agent::config::DEFAULT_DRAIN_TIMEOUT.as_secs(),
        |value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("drain deadline {value:?} is not a number of seconds"))
        },
    )
}

fn help(args: &[&str]) -> String {
    let out = Command::new(agent_bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("weft-agent --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_overlay_renders_and_validates_against_kubernetes_schemas() {
    let out = Command::new("bash")
        .arg(deploy_dir().join("validate.sh"))
        .output()
        .expect("bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/validate.sh failed:\n{text}");
    let overlays = std::fs::read_dir(deploy_dir().join("overlays"))
        .expect("overlays")
        .count();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        overlays,
        "one ok line per overlay:\n{text}"
    );
}

#[test]
fn the_daemonset_mounts_what_the_agents_configuration_names() {
    let docs = render("default");
    let daemonset = object(&docs, "DaemonSet", "weft-agent");
    let pod = &daemonset["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let vars = env(agent);
    let known = help(&["run"]) + &help(&[]);
    for (name, _) in &vars {
        assert!(
            known.contains(&format!("env: {name}=")),
            "weft-agent does not read {name}"
        );
    }
    let value = |name: &str| var(&vars, name);
    assert_eq!(value("WEFT_KUBE"), "true");

    let host_path = |volume: &Value| {
        volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (bpffs, _) = mount_of(pod, agent, &value("WEFT_BPFFS_DIR"));
    assert_eq!(
        host_path(bpffs),
        "/sys/fs/bpf",
        "pins must land in the host's bpffs"
    );
    let (state, read_only) = mount_of(pod, agent, &value("WEFT_STATE_DIR"));
    assert!(
        !host_path(state).is_empty() && !read_only,
        "state must survive restarts and be writable"
    );
    let (proc, read_only) = mount_of(pod, agent, &value("WEFT_HOST_PROC"));
    assert_eq!(host_path(proc), "/proc");
    assert!(!read_only, "sysctls are written through the host's /proc");
    let (cgroup, _) = mount_of(pod, agent, &value("WEFT_CGROUP_ROOT"));
    assert_eq!(host_path(cgroup), "/sys/fs/cgroup");
    let (root, _) = mount_of(pod, agent, &value("WEFT_CA_ROOT"));
    assert_eq!(root["configMap"]["name"], "weft-ca-root");

    let (token, _) = mount_of(pod, agent, &value("WEFT_TOKEN_FILE"));
    let projected = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(
        projected["path"].as_str(),
        Path::new(&value("WEFT_TOKEN_FILE"))
            .file_name()
            .and_then(|f| f.to_str())
    );
    let ca = object(&docs, "Deployment", "weft-ca");
    let ca_pod = &ca["spec"]["template"]["spec"];
    let ca_vars = env(&ca_pod["containers"][0]);
    let ca_value = |name: &str| var(&ca_vars, name);
    assert_eq!(
        projected["audience"].as_str(),
        Some(ca_value("WEFT_TOKEN_AUDIENCE").as_str()),
        "agent tokens must be issued for the CA's audience"
    );
    assert!(
        value("WEFT_CA_URL").contains(":15012"),
        "the CA listens on 15012"
    );

    // Probes hit endpoints the agent serves, on 15021 (a named port resolves through the
    // container's ports).
    let port_number = |port: &Value| -> Option<u64> {
        port.as_u64().or_else(|| {
            agent["ports"]
                .as_sequence()?
                .iter()
                .find_map(|p| (p["name"] == *port).then(|| p["containerPort"].as_u64())?)
        })
    };
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let path = agent[probe]["httpGet"]["path"].as_str().unwrap_or_default();
        assert!(
            ["/healthz/ready", "/healthz/live"].contains(&path),
            "{probe} on {path}"
        );
        assert_eq!(
            port_number(&agent[probe]["httpGet"]["port"]),
            Some(15021),
            "{probe} must use the readiness port"
        );
    }

    assert!(pod["tolerations"].as_sequence().is_some_and(|t| t
        .iter()
        .any(|t| t["operator"] == "Exists" && t.get("key").is_none())));

    // The CA reads every variable it is given, and its key comes from the weft-ca Secret.
    let ca_help = help(&["ca"]) + &help(&[]);
    for (name, _) in &ca_vars {
        assert!(
            ca_help.contains(&format!("env: {name}=")),
            "weft-agent ca does not read {name}"
        );
    }
    let ca_container = &ca_pod["containers"][0];
    let (secret, read_only) = mount_of(ca_pod, ca_container, &ca_value("WEFT_CA_KEY"));
    assert_eq!(secret["secret"]["secretName"], "weft-ca");
    assert!(read_only);
}

/// A zero-downtime agent upgrade (SPEC "Upgrades"): on each node the new pod starts beside the
/// old one and takes capture over, the old one goes only once the new one is Ready, and on
/// SIGTERM it drains within its deadline, which the grace period must exceed (no preStop hook
/// eats into it). Every overlay here; every Helm rendering in check-helm.py (counted below).
#[test]
fn every_overlay_rolls_the_agent_beside_the_old_one_and_lets_it_drain() {
    for overlay in std::fs::read_dir(deploy_dir().join("overlays")).expect("overlays") {
        let overlay = overlay.expect("overlay").file_name();
        let name = overlay.to_string_lossy();
        let docs = render(&name);
        let daemonset = object(&docs, "DaemonSet", "weft-agent");
        let strategy = &daemonset["spec"]["updateStrategy"];
        assert_eq!(strategy["type"], "RollingUpdate", "{name}");
        assert_eq!(
            strategy["rollingUpdate"]["maxSurge"].as_u64(),
            Some(1),
            "{name}: the new agent pod must start beside the old one"
        );
        assert_eq!(
            strategy["rollingUpdate"]["maxUnavailable"].as_u64(),
            Some(0),
            "{name}: the old agent pod must stay until the new one is Ready"
        );
        let pod = &daemonset["spec"]["template"]["spec"];
        let agent = &pod["containers"][0];
        // Kubernetes' default grace period is 30 s.
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        let drain = drain_secs(agent);
        assert!(
            grace > drain,
            "{name}: terminationGracePeriodSeconds {grace} must exceed the drain deadline {drain} s"
        );
        assert!(
            agent["lifecycle"]["preStop"].is_null(),
            "{name}: a preStop hook runs within the grace period and shortens the drain"
        );
    }
}

/// The admission policy that scopes the agents' `pods/status` patches to their own node,
/// evaluated (cel-python) in every overlay against requests it must admit and refuse.
#[test]
fn agents_may_patch_only_their_own_nodes_pod_conditions() {
    for overlay in std::fs::read_dir(deploy_dir().join("overlays")).expect("overlays") {
        let dir = overlay.expect("overlay").path();
        let rendered = render_text(&dir);
        let mut check = Command::new("python3")
            .arg(deploy_dir().join("check-admission.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), &rendered)
            .expect("write");
        let out = check.wait_with_output().expect("check-admission.py");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: the admission policy decides wrongly:\n{text}",
            dir.display()
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with("ok ")).count(),
            7,
            "{text}"
        );
    }
}

#[test]
fn the_daemonset_asks_only_for_the_privileges_it_documents() {
    let docs = render("default");
    let daemonset = object(&docs, "DaemonSet", "weft-agent");
    let pod = &daemonset["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    // Only the privileges the agent needs: not privileged, no host network or PID, every
    // capability dropped but the documented ones.
    let security = &agent["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_ne!(pod["hostNetwork"].as_bool(), Some(true));
    assert_ne!(pod["hostPID"].as_bool(), Some(true));
    let listed = |v: &Value| -> Vec<String> {
        let mut caps: Vec<String> = v
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        caps.sort();
        caps
    };
    assert_eq!(listed(&security["capabilities"]["drop"]), ["ALL"]);
    let added = listed(&security["capabilities"]["add"]);
    assert_eq!(
        added,
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"]
    );
    let documented = std::fs::read_to_string(deploy_dir().join("README.md")).expect("README");
    for cap in &added {
        assert!(
            documented.contains(&format!("| `{cap}` |")),
            "deploy/README.md does not say why the agent needs {cap}"
        );
    }
    assert!(
        agent["resources"]["requests"]["cpu"].as_str().is_some()
            && agent["resources"]["requests"]["memory"].as_str().is_some(),
        "resource requests"
    );
}

/// The Helm chart, checked with Helm's own SDK: lint, the same objects as each overlay, field for
/// field, its own values honoured and validated, bad values refused (deploy/check-helm.py).
#[test]
fn the_helm_chart_renders_what_the_overlays_render_and_validates() {
    let out = Command::new("python3")
        .arg(deploy_dir().join("check-helm.py"))
        .output()
        .expect("python3");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy/check-helm.py failed:\n{text}");
    let overlays = std::fs::read_dir(deploy_dir().join("overlays"))
        .expect("overlays")
        .count();
    let exact = text
        .lines()
        .filter(|l| l.starts_with("ok ") && l.contains("objects exactly"))
        .count();
    assert_eq!(exact, overlays, "one exact comparison per overlay:\n{text}");
    // Each ci/ rendering and the one with other values: maxSurge 1, maxUnavailable 0, grace
    // period longer than the drain deadline, reckoned with the binary's default.
    let rollouts = text
        .lines()
        .filter(|l| l.starts_with("ok ") && l.contains("rolls with maxSurge 1, maxUnavailable 0"))
        .count();
    assert_eq!(
        rollouts,
        exact + 1,
        "one rollout check per rendering:\n{text}"
    );
    let script =
        std::fs::read_to_string(deploy_dir().join("check-helm.py")).expect("check-helm.py");
    let default = weft_agent::config::DEFAULT_DRAIN_TIMEOUT.as_secs();
    assert!(
        script.contains(&format!("DEFAULT_DRAIN_SECS = {default}\n")),
        "check-helm.py must reckon with the agent's default drain deadline, {default} s"
    );
    assert!(!text.contains("FAIL"), "{text}");
}
