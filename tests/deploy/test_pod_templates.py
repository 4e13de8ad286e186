"""deploy/pod_templates.py: RayCluster head and worker pods become v1 PodTemplates."""

from __future__ import annotations

import pytest

from deploy_checks import load_deploy_module

pod_templates = load_deploy_module("pod_templates", "pod_templates.py")

HEAD = {"metadata": {"labels": {"role": "head"}}, "spec": {"containers": [{"name": "h"}]}}
WORKER = {"spec": {"containers": [{"name": "w"}]}}


def ray_cluster(**spec: object) -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "rc"}, "spec": spec}


def test_head_and_every_worker_group_are_lifted() -> None:
    docs = [None, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}},
            ray_cluster(headGroupSpec={"template": HEAD},
                        workerGroupSpecs=[{"groupName": "gpu", "template": WORKER},
                                          {"template": WORKER}])]
    out = pod_templates.pod_templates(docs)
    assert [d["metadata"]["name"] for d in out] == ["rc-head", "rc-gpu", "rc-worker-1"]
    assert all(d["apiVersion"] == "v1" and d["kind"] == "PodTemplate" for d in out)
    assert out[0]["template"] is HEAD and out[1]["template"] is WORKER


def test_other_kinds_and_api_groups_are_ignored() -> None:
    lookalike = {**ray_cluster(headGroupSpec={"template": HEAD}), "apiVersion": "example.com/v1"}
    assert pod_templates.pod_templates([lookalike]) == []


@pytest.mark.parametrize("spec", [{}, {"headGroupSpec": {"template": HEAD},
                                       "workerGroupSpecs": [{"groupName": "g"}]}],
                         ids=["no-head", "worker-without-template"])
def test_missing_templates_are_errors(spec: dict) -> None:
    with pytest.raises(ValueError, match="RayCluster rc"):
        pod_templates.pod_templates([ray_cluster(**spec)])
