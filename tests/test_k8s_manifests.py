"""The Kubernetes manifests under k8s/ are what KubeRay, Kubernetes and Ray Serve accept, the
Serve config inside the RayService builds the application, and a broken manifest fails here with
its field named."""

from __future__ import annotations

import copy
import importlib
import shlex
from pathlib import Path

import pytest
import yaml
from ray.serve import Application

from cluster.policies import POLICIES
from serve_app.cli import build_parser
from tests.manifests import (
    documents,
    manifest_errors,
    manifest_files,
    serve_config_errors,
    serve_config_of,
)

DOCS = [(path, doc) for path in manifest_files() for doc in documents(path)]


def _doc(kind: str, name: str) -> dict:
    return next(
        copy.deepcopy(d) for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name
    )


def test_manifests_are_there() -> None:
    kinds = sorted(d["kind"] for _, d in DOCS)
    assert kinds == ["PersistentVolumeClaim", "RayJob", "RayService"]


@pytest.mark.parametrize(
    "doc", [d for _, d in DOCS], ids=[f"{p.name}:{d['kind']}" for p, d in DOCS]
)
def test_manifest_is_valid(doc: dict) -> None:
    assert manifest_errors(doc) == []


def _build(config: dict) -> list[Application]:
    apps = []
    for app in config["applications"]:
        module, attr = app["import_path"].split(":")
        apps.append(getattr(importlib.import_module(module), attr)(app.get("args", {})))
    return apps


def test_rayservice_serve_config_builds_the_app() -> None:
    apps = _build(serve_config_of(_doc("RayService", "rankserve")))
    assert len(apps) == 1 and isinstance(apps[0], Application)


def test_local_serve_config_is_valid() -> None:
    path = Path(__file__).resolve().parent.parent / "serve_app" / "serve_config.yaml"
    assert serve_config_errors(yaml.safe_load(path.read_text())) == []


def test_a_wrong_type_is_named() -> None:
    doc = _doc("RayService", "rankserve")
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "four"
    errors = manifest_errors(doc)
    assert len(errors) == 1
    assert errors[0].startswith("spec.rayClusterConfig.workerGroupSpecs[0].replicas:")


def test_an_unknown_field_is_named() -> None:
    doc = _doc("RayJob", "rankserve-bench")
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "volumeMount"
    ] = []
    (error,) = manifest_errors(doc)
    assert error.startswith("spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]:")
    assert "'volumeMount'" in error


def test_a_broken_core_resource_is_named() -> None:
    doc = _doc("PersistentVolumeClaim", "rankserve-bench")
    doc["spec"]["accessModes"] = "ReadWriteOnce"
    (error,) = manifest_errors(doc)
    assert error.startswith("spec.accessModes:")


def test_a_broken_serve_config_is_named() -> None:
    doc = _doc("RayService", "rankserve")
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    del config["applications"][0]["import_path"]
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    errors = manifest_errors(doc)
    assert errors and all(e.startswith("serveConfigV2.applications.0.import_path") for e in errors)


def test_bad_app_args_fail_the_build() -> None:
    config = serve_config_of(_doc("RayService", "rankserve"))
    config["applications"][0]["args"]["engine"]["max_num_seqs_typo"] = 8
    with pytest.raises((TypeError, ValueError), match="max_num_seqs_typo"):
        _build(config)


def test_bench_job_runs_rankserve_bench_into_its_volume() -> None:
    job = _doc("RayJob", "rankserve-bench")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["rankserve", "bench"]
    args = build_parser(argv[1:]).parse_args(argv[1:])
    service = _doc("RayService", "rankserve")["metadata"]["name"]
    assert args.url == f"http://{service}-serve-svc:8000"
    assert args.ray_address == f"ray://{service}-head-svc:10001"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volume = mounts[str(args.out.parent)]
    claim = next(v for v in head["volumes"] if v["name"] == volume)["persistentVolumeClaim"]
    claims = {d["metadata"]["name"] for _, d in DOCS if d["kind"] == "PersistentVolumeClaim"}
    assert claim["claimName"] in claims
    assert POLICIES.parse_list(args.policy) == ["fcfs", "ltr"]
