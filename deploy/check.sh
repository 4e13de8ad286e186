#!/usr/bin/env bash
# Validate every deploy file with real tools (installed by deploy/install-tools.sh).
#   deploy/check.sh [all|dockerfiles|scripts|compose|monitoring|helm]
# Exits non-zero on the first failing check. Rendered manifests go to $SPARSE_SERVE_CHECK_OUT
# (default: a temporary folder) for inspection.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
tools="${SPARSE_SERVE_TOOLS_DIR:-$repo/.cache/tools}/bin"
out="${SPARSE_SERVE_CHECK_OUT:-$(mktemp -d)}"
chart="$here/helm/sparse-serve"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
kube_versions=(1.27.0 1.37.0)

for tool in hadolint shellcheck docker-compose promtool kubernetes-validate python; do
    if [ ! -x "$tools/$tool" ]; then
        echo "check: $tools/$tool missing: run deploy/install-tools.sh first" >&2
        exit 2
    fi
done
mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

check_dockerfiles() {
    step "hadolint (any finding fails)"
    "$tools/hadolint" --failure-threshold style \
        "$here/docker/Dockerfile" "$here/docker/Dockerfile.cpu"
    echo "ok: deploy/docker/Dockerfile deploy/docker/Dockerfile.cpu"
}

check_scripts() {
    step "shellcheck"
    "$tools/shellcheck" "$here/install-tools.sh" "$here/check.sh" "$here/container-smoke.sh" \
        "$here/docker/entrypoint.sh"
    echo "ok: deploy/*.sh deploy/docker/entrypoint.sh"
}

compose() { "$tools/docker-compose" --project-directory "$here" "$@"; }

check_compose() {
    step "docker compose config (Compose v2, schema + interpolation + merge)"
    compose -f "$here/compose.yaml" config --quiet
    compose -f "$here/compose.yaml" --profile monitoring config --quiet
    compose -f "$here/compose.yaml" -f "$here/compose.cpu.yaml" config --quiet
    compose -f "$here/compose.yaml" -f "$here/compose.cpu.yaml" --profile monitoring config --quiet
    SPARSE_SERVE_GPUS=2 compose -f "$here/compose.yaml" config --quiet
    echo "ok: compose.yaml (GPU), + monitoring profile, + compose.cpu.yaml override"
}

check_monitoring() {
    step "promtool check config / rules (Prometheus config and every Grafana panel query)"
    "$tools/promtool" check config "$here/prometheus/prometheus.yml"
    "$tools/python" "$here/dashboard_rules.py" "$here/grafana/dashboards/sparse-serve.json" \
        > "$out/dashboard-rules.yaml"
    "$tools/promtool" check rules "$out/dashboard-rules.yaml"
}

check_helm() {
    local values name rendered
    for values in "" values-single-gpu.yaml values-ray-2node.yaml; do
        name="${values:-values.yaml}"
        local args=()
        [ -n "$values" ] && args=(-f "$chart/$values")
        step "helm lint --strict ($name)"
        "$tools/python" "$here/helm_tool.py" lint "$chart" --strict "${args[@]}"
        step "helm template ($name) | kubernetes-validate --strict"
        rendered="$out/rendered-${name%.yaml}.yaml"
        "$tools/python" "$here/helm_tool.py" template "$chart" "${args[@]}" \
            --name sparse-serve --namespace llm > "$rendered"
        "$tools/python" "$here/pod_templates.py" "$rendered" > "${rendered%.yaml}-pods.yaml"
        for kube in "${kube_versions[@]}"; do
            "$tools/kubernetes-validate" --strict --quiet --kubernetes-version "$kube" \
                "$rendered" "${rendered%.yaml}-pods.yaml"
        done
        echo "ok: $(grep -c '^kind:' "$rendered") objects, $(grep -c '^kind:' "${rendered%.yaml}-pods.yaml" || true) embedded pod templates, Kubernetes ${kube_versions[*]}"
    done
}

what="${1:-all}"
case "$what" in
    all) check_dockerfiles; check_scripts; check_compose; check_monitoring; check_helm ;;
    dockerfiles) check_dockerfiles ;;
    scripts) check_scripts ;;
    compose) check_compose ;;
    monitoring) check_monitoring ;;
    helm) check_helm ;;
    *) echo "usage: $0 [all|dockerfiles|scripts|compose|monitoring|helm]" >&2; exit 2 ;;
esac
printf '\ncheck: %s passed (rendered files in %s)\n' "$what" "$out"
