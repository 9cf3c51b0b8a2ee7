"""The layout holds: the scheduling core is pure (no Ray, vLLM, runtime adapter, serving app or
predictor import, checked by the import-linter contract in pyproject.toml), the contract names
every part of the core, and no module grows past the size one concept needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cluster", "serve_app", "predictor_actor", "benchmarks", "scripts", "tests")
MAX_LINES = 400
GENERATED = ("_pb2.py", "_pb2_grpc.py")


def contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (only,) = config["contracts"]
    return only


def test_the_core_imports_nothing_of_ray_vllm_the_runtime_the_app_or_the_predictor():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_contract_covers_all_of_cluster_but_runtime():
    parts = {
        f"cluster.{p.stem}"
        for p in (ROOT / "cluster").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert "cluster.runtime" in parts
    assert set(contract()["source_modules"]) == parts - {"cluster.runtime"}
    assert {"ray", "vllm", "cluster.runtime", "serve_app", "predictor_actor"} <= set(
        contract()["forbidden_modules"]
    )


def test_no_module_is_over_the_size_of_one_concept():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if not path.name.endswith(GENERATED)
    }
    too_big = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"modules over {MAX_LINES} lines: {too_big}"
