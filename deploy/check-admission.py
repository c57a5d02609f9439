#!/usr/bin/env python3
"""Evaluates the ValidatingAdmissionPolicy `weft-agent-status-scope` in a rendered manifest
(stdin or the file given) against the requests it must admit and refuse, with cel-python, the
way the API server evaluates it: matchConditions, then variables in order, then validations.
Prints one line per case; exits non-zero if any case decides otherwise. Offline.

Needs: python3 with PyYAML and cel-python (`pip install cel-python`; `cargo xtask setup`)."""
import sys

import celpy
import yaml
from celpy import celtypes

POLICY = "weft-agent-status-scope"
AGENT = "system:serviceaccount:weft-system:weft-agent"
NODE_CLAIM = "authentication.kubernetes.io/node-name"


def load(stream):
    for doc in yaml.safe_load_all(stream):
        if doc and doc.get("kind") == "ValidatingAdmissionPolicy" and doc["metadata"]["name"] == POLICY:
            return doc["spec"]
    sys.exit(f"check-admission: no ValidatingAdmissionPolicy {POLICY} rendered")


def decide(spec, username, extra, old, new):
    env = celpy.Environment()

    def run(expression, activation):
        return env.program(env.compile(expression)).evaluate(activation)

    activation = {
        "request": celpy.json_to_cel({"userInfo": {"username": username, "extra": extra}}),
        "object": celpy.json_to_cel(new),
        "oldObject": celpy.json_to_cel(old),
    }
    for condition in spec.get("matchConditions", []):
        if not bool(run(condition["expression"], activation)):
            return "not matched"
    variables = celtypes.MapType({})
    for variable in spec.get("variables", []):
        activation["variables"] = variables
        value = run(variable["expression"], activation)
        variables = celtypes.MapType({**variables, celtypes.StringType(variable["name"]): value})
    activation["variables"] = variables
    for validation in spec["validations"]:
        result = run(validation["expression"], activation)
        if not isinstance(result, celtypes.BoolType) or not bool(result):
            return "deny: " + validation["message"]
    return "allow"


def pod(node, conditions, phase="Running"):
    return {
        "spec": {"nodeName": node},
        "status": {"phase": phase, "podIPs": [{"ip": "10.244.1.5"}], "conditions": conditions},
    }


def main():
    spec = load(open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin)
    unready = {"type": "Ready", "status": "False"}
    enrolled = {"type": "weft.io/enrolled", "status": "True"}
    on_a = {NODE_CLAIM: ["node-a"]}
    cases = [
        ("the agent sets weft.io/enrolled on its own node's pod", AGENT, on_a,
         pod("node-a", [unready]), pod("node-a", [unready, enrolled]), "allow"),
        ("the agent updates weft.io/enrolled again", AGENT, on_a,
         pod("node-a", [unready, {**enrolled, "status": "False"}]), pod("node-a", [unready, enrolled]), "allow"),
        ("another node's pod", AGENT, on_a,
         pod("node-b", [unready]), pod("node-b", [unready, enrolled]), "deny"),
        ("a token without a node claim", AGENT, {},
         pod("node-a", [unready]), pod("node-a", [unready, enrolled]), "deny"),
        ("another condition (Ready)", AGENT, on_a,
         pod("node-a", [unready]), pod("node-a", [{**unready, "status": "True"}, enrolled]), "deny"),
        ("the phase", AGENT, on_a,
         pod("node-a", [unready]), pod("node-a", [unready, enrolled], phase="Failed"), "deny"),
        ("someone else's request is not this policy's business", "system:node:node-b", {},
         pod("node-a", [unready]), pod("node-a", [{**unready, "status": "True"}]), "not matched"),
    ]
    failed = 0
    for name, user, extra, old, new, want in cases:
        got = decide(spec, user, extra, old, new)
        ok = got.startswith(want)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
