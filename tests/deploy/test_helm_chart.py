"""deploy/helm/sparse-serve: Helm's linter and renderer, Kubernetes schemas, and what the pods get."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy_checks import CHART, DEPLOY, Tools

SINGLE_GPU = CHART / "values-single-gpu.yaml"
RAY_2NODE = CHART / "values-ray-2node.yaml"


def render(tools: Tools, *values: dict[str, Any] | Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Render with values files/dicts (later wins); objects keyed by "Kind/name"."""
    args: list[str | Path] = []
    for i, v in enumerate(values):
        if isinstance(v, dict):
            path = tmp_path / f"values-{i}.yaml"
            path.write_text(yaml.safe_dump(v))
            v = path
        args += ["-f", v]
    done = tools.helm("template", CHART, *args, "--name", "llm", "--namespace", "ai")
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def render_error(tools: Tools, values: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "bad-values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = tools.helm("template", CHART, "-f", path)
    assert done.returncode == 1, done.stdout
    return done.stderr


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod_spec["containers"]
    return c


@pytest.mark.slow
def test_lint_template_and_kubernetes_schemas(tools: Tools) -> None:
    done = tools.run(DEPLOY / "check.sh", "helm")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("1 chart(s) linted, no failures") == 3
    assert "2 embedded pod templates" in done.stdout  # the RayCluster's head and worker pods


def test_single_gpu_deployment(tools: Tools, tmp_path: Path) -> None:
    objs = render(tools, SINGLE_GPU, tmp_path=tmp_path)
    assert set(objs) == {"Deployment/llm-sparse-serve", "Service/llm-sparse-serve",
                         "ConfigMap/llm-sparse-serve-profile",
                         "PersistentVolumeClaim/llm-sparse-serve-models",
                         "ServiceMonitor/llm-sparse-serve"}
    pod = objs["Deployment/llm-sparse-serve"]["spec"]["template"]["spec"]
    c = container(pod)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = c["args"]
    assert args[args.index("--model") + 1] == "/models/Llama-3.1-8B-Instruct"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--profile") + 1] == "/profiles/profile.json"
    assert "--distributed-executor-backend" not in args
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001


def test_api_key_is_a_mounted_secret_file(tools: Tools, tmp_path: Path) -> None:
    objs = render(tools, {"apiKey": {"create": True, "value": "k-42"}}, tmp_path=tmp_path)
    secret = objs["Secret/llm-sparse-serve-api-key"]
    assert secret["data"] == {"api-key": "ay00Mg=="}  # base64("k-42")
    pod = objs["Deployment/llm-sparse-serve"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container(pod)["env"]}
    assert env["SPARSE_SERVE_API_KEY_FILE"] == "/var/run/secrets/sparse-serve/api-key"
    assert "SPARSE_SERVE_API_KEY" not in env
    (vol,) = [v for v in pod["volumes"] if v["name"] == "api-key"]
    assert vol["secret"]["secretName"] == "llm-sparse-serve-api-key"


def test_profile_configmap_holds_the_json(tools: Tools, tmp_path: Path) -> None:
    profile = {"model": "m", "heads": [[0, 1, "vertical_slash"]]}
    objs = render(tools, {"profile": {"enabled": True, "json": json.dumps(profile)}},
                  tmp_path=tmp_path)
    data = objs["ConfigMap/llm-sparse-serve-profile"]["data"]
    assert json.loads(data["profile.json"]) == profile


def test_single_node_parallelism_takes_all_gpus_on_one_pod(tools: Tools, tmp_path: Path) -> None:
    objs = render(tools, {"serve": {"tensorParallelSize": 2, "pipelineParallelSize": 2,
                                    "distributedExecutorBackend": "mp"}}, tmp_path=tmp_path)
    c = container(objs["Deployment/llm-sparse-serve"]["spec"]["template"]["spec"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert c["args"][c["args"].index("--distributed-executor-backend") + 1] == "mp"


def test_ray_two_nodes(tools: Tools, tmp_path: Path) -> None:
    objs = render(tools, RAY_2NODE, tmp_path=tmp_path)
    assert not [k for k in objs if k.startswith("Deployment/")]
    cluster = objs["RayCluster/llm-sparse-serve"]["spec"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 1
    head = container(cluster["headGroupSpec"]["template"]["spec"])
    worker = container(workers["template"]["spec"])
    assert head["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8
    script = head["args"][0]
    assert "ray start --head --port=6379" in script
    assert "ray_wait_nodes.py --nodes 2 --timeout 1200" in script
    assert ("'--tensor-parallel-size' '8' '--pipeline-parallel-size' '2' "
            "'--distributed-executor-backend' 'ray'") in script
    assert script.index("ray start") < script.index("ray_wait_nodes") < script.index("entrypoint.sh")
    assert "ray start --address=llm-sparse-serve-head-svc.ai.svc:6379 --num-gpus=8 --block" \
        in worker["args"][0]
    # The Service sends traffic to the head pod, where the HTTP server runs.
    selector = objs["Service/llm-sparse-serve"]["spec"]["selector"]
    head_labels = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    assert selector.items() <= head_labels.items()
    assert not selector.items() <= workers["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(("values", "message"), [
    ({"ray": {"enabled": True}}, "ray.enabled needs serve.pipelineParallelSize >= 2"),
    ({"ray": {"enabled": True}, "serve": {"pipelineParallelSize": 2,
                                          "distributedExecutorBackend": "mp"}}, "cannot span nodes"),
    ({"apiKey": {"create": True}}, "apiKey.create=true needs apiKey.value"),
    ({"profile": {"enabled": True}}, "profile.enabled needs profile.json"),
    ({"profile": {"enabled": True, "json": "{not json"}}, "profile.json is not valid JSON"),
    ({"serve": {"dtype": "fp8"}}, "/serve/dtype"),
    ({"serve": {"tensorParalelSize": 2}}, "additional properties 'tensorParalelSize' not allowed"),
], ids=["ray-one-node", "ray-mp", "key-no-value", "profile-empty", "profile-bad-json",
        "schema-dtype", "schema-typo"])
def test_inconsistent_values_are_refused(tools: Tools, tmp_path: Path, values: dict[str, Any],
                                         message: str) -> None:
    assert message in render_error(tools, values, tmp_path)


def test_strict_lint_fails_on_schema_violations(tools: Tools, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("service:\n  port: 70000\n")
    done = tools.helm("lint", CHART, "--strict", "-f", bad)
    assert done.returncode == 1
    assert "/service/port" in done.stdout and "FAILED" in done.stdout


def test_kubernetes_validate_catches_a_broken_manifest(tools: Tools, tmp_path: Path) -> None:
    objs = render(tools, SINGLE_GPU, tmp_path=tmp_path)
    deployment = objs["Deployment/llm-sparse-serve"]
    container(deployment["spec"]["template"]["spec"])["startupProbe"]["httpGet"]["pth"] = "/health"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    done = tools.run("kubernetes-validate", "--strict", "-k", "1.27.0", path)
    assert done.returncode != 0
    assert "'pth' was unexpected" in done.stdout + done.stderr
