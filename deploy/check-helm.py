#!/usr/bin/env python3
"""Checks the Helm chart in deploy/helm/weft with Helm's own Go SDK (helm-python-sdk binds it;
no helm binary, no cluster):

1. `helm lint --strict` finds nothing;
2. for each values file in the chart's ci/ folder, the chart (templates and crds/) renders
   exactly the objects `kubectl kustomize deploy/overlays/<name>` renders, field for field, so
   the two ways to install cannot drift apart;
3. values the overlays do not cover (another trust domain, an image digest, no namespace
   object) render what they promise, and every rendering validates strictly with
   kubernetes-validate;
4. values outside the schema are refused;
5. every rendering rolls the agent without downtime: maxSurge 1, maxUnavailable 0, and a
   termination grace period longer than the agent's drain deadline.

Prints one line per check; exits non-zero if any fails. Offline.
Needs: python3 with PyYAML, helm-python-sdk, kubernetes-validate, kubectl (`cargo xtask setup`)."""
import pathlib
import subprocess
import sys
import tempfile

import yaml
from helm_python import Chart, lint

DEPLOY = pathlib.Path(__file__).resolve().parent
CHART = DEPLOY / "helm" / "weft"
NAMESPACE = "weft-system"
KUBE_VERSIONS = ["1.32.0"]
failed = False


def report(ok, what, detail=""):
    global failed
    failed |= not ok
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail else ""))


def key(doc):
    meta = doc.get("metadata", {})
    return (doc.get("apiVersion"), doc.get("kind"), meta.get("namespace"), meta.get("name"))


def documents(texts):
    docs = {}
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if doc:
                docs[key(doc)] = doc
    return docs


def render(values):
    chart = Chart.load(CHART)
    rendered = chart.render(values, name="weft", namespace=NAMESPACE, is_install=True)
    crds = [c["data"] for c in chart.crds]
    return documents(list(rendered.values()) + crds)


def kustomize(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
        check=True, capture_output=True, text=True,
    )
    return documents([out.stdout])


def differences(a, b, path=""):
    """Where two parsed objects differ, as short paths. Environment variables compare as a set
    by name (kustomize's merge puts a patched-in variable first, the chart appends it; nothing
    here refers to another variable, so order means nothing)."""
    if path.endswith(".env") and isinstance(a, list) and isinstance(b, list):
        a, b = (sorted(x, key=lambda e: e.get("name", "")) for x in (a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += differences(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path}: chart {a!r} vs kustomize {b!r}"]


def validate(name, docs):
    """kubernetes-validate --strict, but for the monitoring.coreos.com objects (monitoring.enabled),
    which it has no schema for: check-monitoring.py checks those, as validate.sh has it do."""
    with tempfile.TemporaryDirectory() as tmp:
        rendered, core = pathlib.Path(tmp, "rendered.yaml"), pathlib.Path(tmp, "core.yaml")
        rendered.write_text(yaml.safe_dump_all(list(docs.values())))
        split = subprocess.run([sys.executable, str(DEPLOY / "check-monitoring.py"), "--split", str(rendered), str(core)],
                               capture_output=True, text=True)
        args = ["kubernetes-validate", "--strict"]
        for v in KUBE_VERSIONS:
            args += ["-k", v]
        out = subprocess.run(args + [str(core)], capture_output=True, text=True)
    problems = [l for l in (out.stdout + out.stderr).splitlines() if l and not l.startswith("INFO ")]
    problems += [l for l in split.stderr.splitlines() if l.strip()]
    monitoring = split.stdout.strip()
    detail = "; ".join(problems[:5]) or ("" if monitoring.startswith("0 ") else monitoring)
    report(out.returncode == 0 and split.returncode == 0 and not problems,
           f"{name}: {len(docs)} objects validate (strict)", detail)


def container(docs, kind, name):
    return docs[("apps/v1", kind, NAMESPACE, name)]["spec"]["template"]["spec"]["containers"][0]


def env(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}


# agent/src/config.rs DEFAULT_DRAIN_TIMEOUT: the drain deadline when none is configured.
DEFAULT_DRAIN_SECS = 25


def drain_secs(c):
    """The agent's drain deadline in seconds, from its flag or variable, else the default."""
    words = [str(w) for w in c.get("command", []) + c.get("args", [])]
    for i, word in enumerate(words):
        if word == "--drain-timeout-secs" and i + 1 < len(words):
            return int(words[i + 1])
        if word.startswith("--drain-timeout-secs="):
            return int(word.split("=", 1)[1])
    value = env(c).get("WEFT_DRAIN_TIMEOUT_SECS")
    return int(value) if value is not None else DEFAULT_DRAIN_SECS


def check_rollout(name, docs):
    """The agent's upgrade hands over on each node (new pod beside the old, old one drains on
    SIGTERM): that needs a surge pod, no unavailable one, and a grace period the drain fits in."""
    daemonset = docs[("apps/v1", "DaemonSet", NAMESPACE, "weft-agent")]
    strategy = daemonset["spec"].get("updateStrategy", {})
    rolling = strategy.get("rollingUpdate", {})
    pod = daemonset["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = drain_secs(pod["containers"][0])
    ok = (strategy.get("type") == "RollingUpdate" and rolling.get("maxSurge") == 1
          and rolling.get("maxUnavailable") == 0 and grace > drain)
    report(ok, f"{name}: the agent rolls with maxSurge 1, maxUnavailable 0, grace > drain",
           f"grace {grace} s, drain {drain} s" + ("" if ok else f", updateStrategy {strategy!r}"))


# Helm's severities: 1 info, 2 warning, 3 error. An info ("icon is recommended") is advice.
INFO = 1
linted = lint(str(CHART), strict=True, namespace=NAMESPACE)
serious = [m for m in linted.get("messages") or [] if m.get("severity") != INFO] + (linted.get("errors") or [])
report(not serious, "helm lint --strict", "; ".join(str(m) for m in serious))

for values_file in sorted((CHART / "ci").glob("*-values.yaml")):
    overlay = values_file.name.removesuffix("-values.yaml")
    values = yaml.safe_load(values_file.read_text()) or {}
    chart_docs = render(values)
    kustomize_docs = kustomize(overlay)
    missing = sorted(set(kustomize_docs) - set(chart_docs), key=str)
    extra = sorted(set(chart_docs) - set(kustomize_docs), key=str)
    diffs = [f"{k[1]} {k[3]}{d}" for k in kustomize_docs.keys() & chart_docs.keys()
             for d in differences(chart_docs[k], kustomize_docs[k])]
    report(not (missing or extra or diffs),
           f"{overlay}: chart renders the overlay's {len(kustomize_docs)} objects exactly",
           "; ".join([f"missing {m}" for m in missing] + [f"extra {e}" for e in extra] + diffs)[:2000])
    validate(f"chart with ci/{values_file.name}", chart_docs)
    check_rollout(f"chart with ci/{values_file.name}", chart_docs)

digest = "sha256:" + "ab" * 32
docs = render({"trustDomain": "example.org", "createNamespace": False,
               "image": {"repository": "registry.example/weft", "digest": digest}})
agent, ca = container(docs, "DaemonSet", "weft-agent"), container(docs, "Deployment", "weft-ca")
report(env(agent).get("WEFT_TRUST_DOMAIN") == "example.org" and env(ca).get("WEFT_TRUST_DOMAIN") == "example.org",
       "trustDomain reaches the agents and the CA")
report(agent["image"] == ca["image"] == f"registry.example/weft@{digest}", "an image digest pins both workloads",
       agent["image"])
report(not any(k[1] == "Namespace" for k in docs), "createNamespace: false renders no Namespace")
validate("chart with another trust domain and a digest", docs)
check_rollout("chart with another trust domain and a digest", docs)

docs = render({"monitoring": {"enabled": True, "labels": {"release": "prometheus"}}})
selected = [k for k in docs if k[1] in ("PodMonitor", "PrometheusRule")]
report(len(selected) == 3 and all(docs[k]["metadata"]["labels"].get("release") == "prometheus" for k in selected),
       "monitoring.labels reach the PodMonitors and the PrometheusRule", ", ".join(f"{k[1]} {k[3]}" for k in selected))
validate("chart with monitoring.labels", docs)

for bad, why in [({"ca": {"replicas": 0}}, "ca.replicas 0"),
                 ({"monitoring": {"enabled": "yes"}}, "monitoring.enabled not a boolean"),
                 ({"image": {"repository": "x", "digest": "latest"}}, "a digest that is not sha256"),
                 ({"agnet": {}}, "a misspelt key")]:
    try:
        render(bad)
        report(False, f"values with {why} are refused", "they rendered")
    except Exception as error:  # the SDK raises its own error types; any refusal will do
        report(True, f"values with {why} are refused", str(error).splitlines()[0][:120])

sys.exit(1 if failed else 0)
