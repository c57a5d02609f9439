#!/usr/bin/env bash
# Renders every overlay under deploy/overlays/ and validates each rendered object against the
# Kubernetes OpenAPI schemas with kubernetes-validate in strict mode (unknown fields are errors).
# Prints one line per overlay; exits non-zero if any overlay fails. kubernetes-validate has no
# schema for the Prometheus Operator's kinds (monitoring.coreos.com: the monitoring overlay's
# PodMonitors and PrometheusRule), and none is vendored here: check-monitoring.py checks those
# (a schema of the operator's fields for what Weft writes, promtool, rules.yaml) and the rest
# goes to kubernetes-validate; the overlay's line says how many it checked that way.
#
# Needs: kubectl (for `kubectl kustomize`, or set KUSTOMIZE="kustomize build"),
# kubernetes-validate (`pip install kubernetes-validate`), python3 with PyYAML and promtool
# (Debian's prometheus package) for the monitoring overlay. Offline.
#
# KUBE_VERSIONS: Kubernetes versions to validate against (default: 1.32.0 and the newest the
# installed kubernetes-validate knows).
set -euo pipefail

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a kustomize <<<"${KUSTOMIZE:-kubectl kustomize}"

for tool in "${kustomize[0]}" kubernetes-validate; do
    command -v "$tool" >/dev/null || {
        echo "validate.sh: $tool not found (kubernetes-validate: pip install kubernetes-validate)" >&2
        exit 2
    }
done

if [[ -z ${KUBE_VERSIONS:-} ]]; then
    newest=$(kubernetes-validate --help | tr -s ' \n' ' ' | grep -o 'Defaults to [0-9][0-9.]*' | awk '{print $3}' || true)
    KUBE_VERSIONS="1.32.0 ${newest}"
fi
version_args=()
for v in $KUBE_VERSIONS; do version_args+=(-k "$v"); done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=0

# Every generated CRD must be listed in crds/kustomization.yaml, or the base silently lacks it.
for crd in "$deploy"/crds/*.yaml; do
    name=$(basename "$crd")
    [[ $name == kustomization.yaml ]] && continue
    if ! grep -qE "^[[:space:]]*-[[:space:]]*${name//./\\.}[[:space:]]*$" "$deploy/crds/kustomization.yaml"; then
        echo "FAIL crds: $name is not listed in crds/kustomization.yaml"
        failed=1
    fi
done

for dir in "$deploy"/overlays/*/; do
    overlay=$(basename "$dir")
    rendered="$work/$overlay.yaml"
    if ! "${kustomize[@]}" "$dir" >"$rendered" 2>"$work/$overlay.err"; then
        echo "FAIL $overlay: kustomize: $(tr '\n' ' ' <"$work/$overlay.err")"
        failed=1
        continue
    fi
    objects=$(grep -c '^kind:' "$rendered" || true)
    if grep -q '^kind: Secret$' "$rendered"; then
        echo "FAIL $overlay: renders a Secret (the CA key must never come from this tree)"
        failed=1
        continue
    fi
    core="$work/$overlay.core.yaml"
    if ! monitoring=$(python3 "$deploy/check-monitoring.py" --split "$rendered" "$core" 2>"$work/$overlay.monitoring"); then
        echo "FAIL $overlay: monitoring objects (deploy/check-monitoring.py):"
        sed 's/^/    /' "$work/$overlay.monitoring"
        failed=1
        continue
    fi
    [[ $monitoring == "0 "* ]] && monitoring="" || monitoring="; $monitoring"
    rc=0
    out=$(kubernetes-validate --strict "${version_args[@]}" "$core" 2>&1) || rc=$?
    # kubernetes-validate exits 0 when it has no schema for a kind (a WARN line): count anything
    # but an INFO "passed" line as a failure, so a misspelt kind cannot slip through.
    problems=$(grep -v '^INFO ' <<<"$out" || true)
    passed=$(grep -c '^INFO .* passed ' <<<"$out" || true)
    versions=$(grep -o 'against version [0-9.]*' <<<"$out" | awk '{print $3}' | sort -uV | paste -sd, - || true)
    if [[ $rc -ne 0 || -n $problems ]]; then
        echo "FAIL $overlay: kubernetes-validate (exit $rc):"
        sed 's/^/    /' <<<"${problems:-$out}"
        failed=1
    else
        echo "ok   $overlay: $objects objects, $passed checks passed (strict, Kubernetes $versions)$monitoring"
    fi
done

exit "$failed"
