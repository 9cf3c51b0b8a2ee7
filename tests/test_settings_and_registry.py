"""The one conversion path from written settings to the config dataclasses, and the plug-in
registries whose names every list, CLI choice and error derives from."""

from __future__ import annotations

import pytest

from cluster.config import EngineConfig, PolicyConfig, SchedulerConfig
from cluster.policies import POLICIES
from cluster.registry import Registry
from cluster.routing import ROUTINGS
from cluster.runtime.engines import ENGINES
from cluster.settings import from_mapping, to_mapping


def test_strings_convert_by_the_field_type_and_nested_sections_merge_over_the_base():
    base = SchedulerConfig(slice_tokens=64)
    cfg = from_mapping(
        base,
        {
            "kv_headroom_fraction": "0.1",
            "policy.starvation_threshold": "50",
            "policy": {"name": "fcfs"},
            "max_engine_waiting": 2,
        },
    )
    assert cfg.kv_headroom_fraction == 0.1 and cfg.max_engine_waiting == 2
    assert cfg.policy == PolicyConfig(name="fcfs", starvation_threshold=50)
    assert cfg.slice_tokens == 64  # untouched fields keep the base's value
    assert from_mapping(cfg, {"slice_tokens": "none"}).slice_tokens is None
    assert from_mapping(base, to_mapping(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"slice_tokens": "many"}, "slice_tokens"),
        ({"slice_tokens": 2.5}, "whole number"),
        ({"kv_headroom_fraction": True}, "not a number"),
        ({"policy.colour": "red"}, "unknown setting policy.colour"),
        ({"policy": "ltr"}, "is a section"),
        ({"kv_headroom_fraction": None}, "cannot be empty"),
        ({"routing": "random"}, "unknown routing 'random'"),  # the dataclass's own check
    ],
)
def test_bad_settings_name_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        from_mapping(SchedulerConfig(), data)


def test_booleans_and_lists_from_strings():
    from cluster.runtime.spec import ReplicaConfig

    assert from_mapping(ReplicaConfig(), {"enforce_eager": "false"}).enforce_eager is False
    assert from_mapping(ReplicaConfig(), {"enforce_eager": "yes"}).enforce_eager is True
    with pytest.raises(ValueError, match="true or false"):
        from_mapping(ReplicaConfig(), {"enforce_eager": "maybe"})
    assert from_mapping(EngineConfig(), {"max_num_seqs": "8"}).max_num_seqs == 8


def test_registries_list_choose_and_refuse_by_name():
    assert POLICIES.names == ("fcfs", "oracle", "ltr", "ssjf", "hrrn", "edf", "slo")
    assert ROUTINGS.names == ("global", "power_of_two", "prefix_aware", "prefix_affinity")
    assert ENGINES.names == ("vllm", "simulated")
    assert POLICIES.parse_list(["ltr,fcfs", " ltr ", "oracle"]) == ["ltr", "fcfs", "oracle"]
    with pytest.raises(ValueError, match="unknown policy 'sjf'; choose one of fcfs, oracle"):
        POLICIES.parse_list(["fcfs,sjf"])


def test_a_lazy_entry_is_imported_on_first_use_only():
    registry = Registry("thing", {"json": "json:dumps", "direct": len})
    assert registry["direct"] is len
    import json

    assert registry["json"] is json.dumps
    with pytest.raises(ValueError, match="unknown thing 'xml'; choose one of json, direct"):
        registry["xml"]


def test_the_app_arguments_split_the_ingress_count_from_the_service_settings():
    from serve_app.app import split_args
    from serve_app.config import ServeConfig

    n, settings = split_args({"ingress_replicas": "2", "model": "m", "num_replicas": 3})
    assert n == 2 and ServeConfig.from_dict(settings).num_replicas == 3
    with pytest.raises(ValueError, match="ingress_replicas"):
        ServeConfig.from_dict({"ingress_replicas": 2, "model": "m"})


def test_the_serve_config_takes_preemption_off_by_default_and_on_with_its_guards():
    from serve_app.config import ServeConfig

    assert not ServeConfig.from_dict({"model": "/models/tiny"}).scheduler.preemption.enabled
    # As `serve run ... scheduler.preemption.enabled=true` writes it: strings.
    preemption = {"enabled": "true", "min_run_tokens": "4", "min_gain_ratio": "2"}
    data = {"model": "/models/tiny", "scheduler": {"preemption": preemption}}
    on = ServeConfig.from_dict(data).scheduler.preemption
    assert on.enabled and on.min_run_tokens == 4 and on.min_gain_ratio == 2.0
    with pytest.raises(ValueError, match="min_gain_ratio"):
        ServeConfig.from_dict({"model": "m", "scheduler": {"preemption": {"min_gain_ratio": 0.5}}})
