"""Lift the pod templates out of custom resources so a Kubernetes schema validator can check them.

Core-schema validators know nothing of KubeRay's ``RayCluster``, but its head and worker groups
embed plain ``PodTemplateSpec`` objects. This writes each of them as a ``v1/PodTemplate`` document
(named after the resource and group), so ``kubernetes-validate --strict`` checks the containers,
probes, volumes and resources of every Ray pod like those of a Deployment.

    pod_templates.py RENDERED.yaml > pod-templates.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml


def ray_cluster_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, PodTemplateSpec) of a RayCluster's head and of each worker group."""
    spec = doc.get("spec") or {}
    head = (spec.get("headGroupSpec") or {}).get("template")
    if not isinstance(head, dict):
        raise ValueError(f"RayCluster {doc['metadata']['name']}: spec.headGroupSpec.template missing")
    yield "head", head
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        template = group.get("template")
        if not isinstance(template, dict):
            raise ValueError(f"RayCluster {doc['metadata']['name']}: workerGroupSpecs[{index}] "
                             "has no template")
        yield str(group.get("groupName") or f"worker-{index}"), template


# (apiVersion group, kind) -> function yielding (suffix, PodTemplateSpec).
EXTRACTORS = {("ray.io", "RayCluster"): ray_cluster_templates}


def pod_templates(docs: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """``v1/PodTemplate`` documents for every pod template embedded in a known custom resource."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        if not doc:
            continue
        group = str(doc.get("apiVersion", "")).split("/")[0]
        extract = EXTRACTORS.get((group, doc.get("kind")))
        if extract is None:
            continue
        for suffix, template in extract(doc):
            out.append({
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{doc['metadata']['name']}-{suffix}"},
                "template": template,
            })
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered", type=Path, help="multi-document YAML (helm template output)")
    args = parser.parse_args(argv)
    try:
        docs = list(yaml.safe_load_all(args.rendered.read_text()))
        templates = pod_templates(docs)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        print(f"pod_templates.py: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(templates, sort_keys=False) if templates else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
