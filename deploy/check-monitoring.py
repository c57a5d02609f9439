#!/usr/bin/env python3
"""The monitoring objects (deploy/monitoring/: PodMonitors, a PrometheusRule, dashboard
ConfigMaps) and the copies made of them, kept in step with their sources.

  check-monitoring.py --write
      writes deploy/monitoring/prometheusrule.yaml from deploy/monitoring/rules.yaml, and the
      Helm chart's copies (helm/weft/files/: Helm reads no file outside its chart) of rules.yaml
      and the dashboards. Run it after changing rules.yaml or a dashboard.
  check-monitoring.py --split RENDERED CORE
      for validate.sh and check-helm.py: writes the objects of RENDERED that Kubernetes has
      schemas for to CORE (for kubernetes-validate), and checks the monitoring.coreos.com ones
      itself, since kubernetes-validate has no schema for them and none is vendored here:
      each against a schema of the fields the Prometheus Operator's CRDs define for what Weft
      uses (unknown fields are errors), every PrometheusRule's groups equal to rules.yaml's
      (and accepted by `promtool check rules`), every PodMonitor selecting pods that carry its
      port: the agent DaemonSet of the same rendering, the waypoint pods that
      agent/api/src/waypoint.rs builds. The generated copies must be up to date too.
      Prints one summary line; problems on stderr; exits 1 on any.

Needs: python3 with PyYAML and jsonschema (kubernetes-validate brings it), promtool (Debian's
prometheus package; `cargo xtask setup`). Offline."""
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
MONITORING = DEPLOY / "monitoring"
RULES = MONITORING / "rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARDS = MONITORING / "dashboards"
CHART_FILES = DEPLOY / "helm" / "weft" / "files"
WAYPOINT_OBJECTS = DEPLOY.parent / "agent" / "api" / "src" / "waypoint.rs"
GROUP = "monitoring.coreos.com"

HEADER = """# GENERATED from rules.yaml by `python3 deploy/check-monitoring.py --write`: do not edit.
# The PrometheusRule carrying rules.yaml's groups, for the Prometheus Operator.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: weft
  namespace: weft-system
  labels:
    app.kubernetes.io/part-of: weft
spec:
"""

# The Prometheus Operator's field names and types (its CRDs, monitoring.coreos.com/v1) for what
# Weft writes; anything else is refused, as kubernetes-validate --strict refuses unknown fields.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object", "additionalProperties": False, "required": ["name", "namespace"],
    "properties": {"name": {"type": "string", "minLength": 1}, "namespace": {"type": "string"},
                   "labels": STRINGS, "annotations": STRINGS},
}
LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": STRINGS,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
RELABELING = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                            "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                            "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                            "dropequal", "DropEqual"]},
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
        "modulus": {"type": "integer"}, "replacement": {"type": "string"},
    },
}
SCHEMAS = {
    "PodMonitor": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": f"{GROUP}/v1"}, "kind": {"const": "PodMonitor"}, "metadata": METADATA,
            "spec": {
                "type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                        "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                    "selector": LABEL_SELECTOR,
                    "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["port"],
                        "properties": {
                            "port": {"type": "string", "minLength": 1}, "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]}, "interval": DURATION,
                            "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": RELABELING},
                            "metricRelabelings": {"type": "array", "items": RELABELING},
                        }}},
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": f"{GROUP}/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": METADATA,
            "spec": {
                "type": "object", "additionalProperties": False, "required": ["groups"],
                "properties": {"groups": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1}, "interval": DURATION,
                        "limit": {"type": "integer"},
                        "rules": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False, "required": ["expr"],
                            "properties": {
                                "record": {"type": "string"}, "alert": {"type": "string"},
                                "expr": {"type": ["string", "integer"]}, "for": DURATION,
                                "keep_firing_for": DURATION, "labels": STRINGS, "annotations": STRINGS,
                            }}},
                    }}}},
            },
        },
    },
}


def chart_copies():
    """(source, copy in the chart) for every file the chart reads."""
    pairs = [(RULES, CHART_FILES / "rules.yaml")]
    pairs += [(d, CHART_FILES / "dashboards" / d.name) for d in sorted(DASHBOARDS.glob("*.json"))]
    return pairs


def prometheus_rule_text():
    body = RULES.read_text()
    start = re.search(r"^groups:", body, re.MULTILINE)
    if not start:
        sys.exit("check-monitoring: rules.yaml has no top-level `groups:`")
    return HEADER + "".join(f"  {line}" if line.strip() else "\n" for line in body[start.start():].splitlines(True))


def write():
    PROMETHEUS_RULE.write_text(prometheus_rule_text())
    print(f"wrote {PROMETHEUS_RULE.relative_to(DEPLOY.parent)}")
    shutil.rmtree(CHART_FILES / "dashboards", ignore_errors=True)
    (CHART_FILES / "dashboards").mkdir(parents=True)
    for source, copy in chart_copies():
        shutil.copyfile(source, copy)
        print(f"wrote {copy.relative_to(DEPLOY.parent)}")


def stale_copies():
    """The generated files that differ from their sources."""
    stale = []
    if not PROMETHEUS_RULE.exists() or PROMETHEUS_RULE.read_text() != prometheus_rule_text():
        stale.append(str(PROMETHEUS_RULE.relative_to(DEPLOY)))
    copies = {copy for _, copy in chart_copies()}
    for source, copy in chart_copies():
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            stale.append(str(copy.relative_to(DEPLOY)))
    for extra in sorted((CHART_FILES / "dashboards").glob("*")):
        if extra not in copies:
            stale.append(f"{extra.relative_to(DEPLOY)} (no such dashboard)")
    return stale


def promtool_problems(groups):
    if shutil.which("promtool") is None:
        return ["promtool not found: install Debian's prometheus package (`cargo xtask setup`)"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": groups}, f)
        f.flush()
        out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    return [] if out.returncode == 0 else [f"promtool check rules: {(out.stdout + out.stderr).strip()}"]


def pod_templates(docs):
    """(namespace, pod labels, container port names) of every workload in the rendering."""
    for doc in docs:
        template = doc.get("spec", {}).get("template") if isinstance(doc.get("spec"), dict) else None
        if doc.get("kind") in ("DaemonSet", "Deployment") and template:
            ports = {p.get("name") for c in template["spec"].get("containers", []) for p in c.get("ports", [])}
            yield doc["metadata"].get("namespace"), template["metadata"].get("labels", {}), ports


def waypoint_pods():
    """The labels and port names agent/api/src/waypoint.rs gives a waypoint's pods."""
    text = WAYPOINT_OBJECTS.read_text()
    labels = dict(re.findall(r'"(app\.kubernetes\.io/[a-z]+)": "([a-z-]+)"', text))
    ports = set(re.findall(r'\{"name": "([a-z-]+)", "containerPort": \d+\}', text))
    return labels, ports


def selects(monitor, labels, ports):
    wanted = monitor["spec"]["selector"].get("matchLabels", {})
    endpoint_ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    return all(labels.get(k) == v for k, v in wanted.items()) and endpoint_ports <= ports


def check(docs, rendering):
    """Problems of the monitoring objects `docs` of `rendering` (every object rendered)."""
    problems = []
    if stale := stale_copies():
        problems.append("out of date (run `python3 deploy/check-monitoring.py --write`): " + ", ".join(stale))
    expected = yaml.safe_load(RULES.read_text())["groups"]
    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        schema = SCHEMAS.get(kind)
        if schema is None:
            problems.append(f"{kind} {name}: no schema here for this kind of {GROUP}")
            continue
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            path = ".".join(str(p) for p in error.absolute_path)
            problems.append(f"{kind} {name}: {path}: {error.message}")
        if kind == "PrometheusRule":
            if doc.get("spec", {}).get("groups") != expected:
                problems.append(f"PrometheusRule {name}: spec.groups differ from monitoring/rules.yaml's groups")
            problems += [f"PrometheusRule {name}: {p}" for p in promtool_problems(doc["spec"]["groups"])]
        if kind == "PodMonitor" and "spec" in doc:
            candidates = list(pod_templates(rendering))
            if doc["spec"].get("namespaceSelector", {}).get("any"):
                candidates.append((None, *waypoint_pods()))
            if not any(selects(doc, labels, ports) for _, labels, ports in candidates):
                problems.append(f"PodMonitor {name}: selects no pod (of this rendering or a waypoint's) with its port")
    return problems


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
        sys.exit(0)
    if len(sys.argv) != 4 or sys.argv[1] != "--split":
        sys.exit(__doc__)
    rendered, core = sys.argv[2], sys.argv[3]
    all_docs = [d for d in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if d]
    monitoring = [d for d in all_docs if str(d.get("apiVersion", "")).startswith(f"{GROUP}/")]
    with open(core, "w") as f:
        yaml.safe_dump_all([d for d in all_docs if d not in monitoring], f)
    found = check(monitoring, all_docs) if monitoring else []
    for problem in found:
        print(problem, file=sys.stderr)
    kinds = sorted({d["kind"] for d in monitoring})
    print(f"{len(monitoring)} {GROUP} objects ({', '.join(kinds) or 'none'}) checked by check-monitoring.py"
          + (" (its own schema, promtool, rules.yaml)" if monitoring else ""))
    sys.exit(1 if found else 0)
