"""Checks of the Kubernetes manifests under k8s/ without a cluster: each KubeRay resource against
its CRD's openAPIV3Schema (tests/data/kuberay/, vendored from KubeRay), each core resource
against Kubernetes' own schema (kubernetes-validate), and each RayService's embedded Serve config
against Ray Serve's schema. Errors name the field, as `kubectl apply` would."""

from __future__ import annotations

import functools
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CRD_DIR = Path(__file__).resolve().parent / "data" / "kuberay"
CRD_FILES = {
    ("ray.io/v1", "RayService"): "ray.io_rayservices.yaml.gz",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml.gz",
}
# The Kubernetes version whose core schemas the manifests are checked against (KubeRay 1.7's
# oldest supported is older; this one is what kubernetes-validate ships and current clusters run).
KUBERNETES_VERSION = "1.33"


def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is not None:
            yield doc


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused: the API server's strict field validation
    (kubectl's default) rejects them, where the structural schema alone would let them pass."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema(api_version, kind))


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    name = CRD_FILES.get((api_version, kind))
    if name is None:
        raise KeyError(f"no vendored CRD for {api_version} {kind}")
    with gzip.open(CRD_DIR / name, "rt") as f:
        crd = yaml.safe_load(f)
    version = api_version.split("/")[1]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return strict(v["schema"]["openAPIV3Schema"])
    raise KeyError(f"{name} has no version {version}")


def field_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def custom_resource_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc.get("apiVersion", ""), doc.get("kind", ""))
    return sorted(f"{field_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc))


def core_resource_errors(doc: dict[str, Any]) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{field_path(e.absolute_path)}: {e.message}"]
    return []


def serve_config_of(doc: dict[str, Any]) -> dict[str, Any] | None:
    """A RayService's embedded Serve config (a YAML string in the CRD), parsed."""
    if doc.get("kind") != "RayService":
        return None
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def serve_config_errors(config: dict[str, Any]) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as e:
        return [
            f"serveConfigV2.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in e.errors()
        ]
    return []


def manifest_errors(doc: dict[str, Any]) -> list[str]:
    """Every problem with one manifest document, each naming its field."""
    if doc.get("apiVersion", "").startswith("ray.io/"):
        errors = custom_resource_errors(doc)
        config = serve_config_of(doc) if not errors else None
        return errors + (serve_config_errors(config) if config is not None else [])
    return core_resource_errors(doc)
