"""Engine replica settings: Ray resources and the engine's environment per device."""

from __future__ import annotations

import pytest

from cluster.runtime.spec import ReplicaConfig, ReplicaSpec


def spec(replica_id: str, cpu_threads_bind: str = "auto", **replica) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id, "/m", replica=ReplicaConfig(**replica), cpu_threads_bind=cpu_threads_bind
    )


def test_cpu_replica_gets_its_own_caches_and_kv_space():
    opts = spec("r0", "1", kv_cache_gib=2, work_dir="/w").actor_options()
    assert opts["num_cpus"] == 1.0 and "num_gpus" not in opts
    env = opts["runtime_env"]["env_vars"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert env["VLLM_CACHE_ROOT"].startswith("/w/r0/") and env["TMPDIR"].startswith("/w/r0/")


def test_gpu_replica_asks_ray_for_a_gpu():
    opts = spec("r1", device="gpu").actor_options()
    assert opts["num_gpus"] == 1
    assert "VLLM_CPU_KVCACHE_SPACE" not in opts["runtime_env"]["env_vars"]


def test_simulated_replica_needs_no_engine_environment():
    opts = spec("r2", kind="simulated").actor_options()
    assert "runtime_env" not in opts and "num_gpus" not in opts


def test_eager_by_default_on_cpu_only():
    assert ReplicaConfig(device="cpu").eager and not ReplicaConfig(device="gpu").eager
    assert not ReplicaConfig(device="cpu", enforce_eager=False).eager


@pytest.mark.parametrize("kwargs", [{"kind": "tgi"}, {"device": "tpu"}, {"kv_cache_gib": 0}])
def test_bad_specs_are_refused(kwargs):
    with pytest.raises(ValueError):
        ReplicaConfig(**kwargs)
