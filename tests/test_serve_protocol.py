"""The serving front end's pure parts: OpenAI request validation, length limits, settings."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pydantic")

from serve_app import openai_protocol as oa  # noqa: E402
from serve_app.config import ServeConfig  # noqa: E402
from serve_app.request_input import check_lengths  # noqa: E402


def parse(body, model=oa.CompletionBody):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return oa.parse_body(raw, model)


def test_valid_completion_and_chat_bodies():
    body = parse(
        {
            "model": "m",
            "prompt": "hi",
            "max_tokens": 5,
            "temperature": 0,
            "stop": "\n",
            "logprobs": None,
            "slo": "chat",
            "tenant": "t1",
            "priority": 2,
        }
    )
    assert (body.prompt, body.max_tokens, body.temperature) == ("hi", 5, 0.0)
    assert body.stop_list() == ("\n",)
    assert (body.slo, body.tenant, body.priority) == ("chat", "t1", 2)
    chat = parse(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        oa.ChatBody,
    )
    assert chat.messages[0].text() == "ab" and chat.include_usage()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{", None),
        (b'"just a string"', None),
        ({"prompt": "x"}, "model"),
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": 5.5}, "max_tokens"),
        ({"model": "m", "prompt": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "prompt": "x", "top_p": 0}, "top_p"),
        ({"model": "m", "prompt": "x", "n": 3}, "n"),
    ],
)
def test_bad_bodies_are_400_with_the_field_named(raw, param):
    with pytest.raises(oa.APIError) as info:
        parse(raw)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404():
    e = oa.model_not_found("x")
    assert e.status == 404 and e.body()["error"]["code"] == "model_not_found"


def test_image_content_parts_are_refused():
    chat = parse(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        oa.ChatBody,
    )
    with pytest.raises(oa.APIError):
        chat.messages[0].text()


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "param"),
    [(10, 0, "max_tokens"), (0, 5, "prompt"), (10, 100, "max_tokens"), (200, 1, "prompt")],
)
def test_length_limits(prompt, max_tokens, param):
    with pytest.raises(oa.APIError) as info:
        check_lengths(prompt, max_tokens, max_model_len=100)
    assert info.value.param == param


def test_length_limit_boundary_is_allowed():
    check_lengths(90, 10, max_model_len=100)


def test_serve_config_from_cli_strings_and_yaml_values():
    cfg = ServeConfig.from_dict(
        {
            "model": "~/m",
            "num_replicas": "3",
            "scheduler.slice_tokens": "none",  # serve run app key=value: dotted strings
            "cpu_threads_bind": "0,1,1",
            "replica": {"num_cpus": "0.5", "kind": "simulated"},  # YAML: a nested section
            "engine.max_num_seqs": "8",
            "scheduler": {"policy": {"name": "fcfs"}},
        }
    )
    assert cfg.num_replicas == 3 and cfg.scheduler.slice_tokens is None
    assert cfg.cpu_threads_bind == ("0", "1", "1") and cfg.replica.num_cpus == 0.5
    assert cfg.engine.max_num_seqs == 8 and cfg.engine.max_model_len == 2048  # serving default
    assert cfg.scheduler.policy.name == "fcfs" and cfg.replica.kind == "simulated"
    assert not cfg.model.startswith("~")
    specs = cfg.replica_specs()
    assert [s.replica_id for s in specs] == ["replica-0", "replica-1", "replica-2"]
    assert [s.cpu_threads_bind for s in specs] == ["0", "1", "1"]
    assert ServeConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"num_replicas": 1}, "model"),
        ({"model": "m", "colour": "red"}, "colour"),
        ({"model": "m", "scheduler.policy.name": "random"}, "policy"),
        ({"model": "m", "replica": {"kind": "tgi"}}, "engine"),
        ({"model": "m", "engine": "vllm"}, "engine"),  # a section given a value
        ({"model": "m", "num_replicas": "two"}, "num_replicas"),
        ({"model": "m", "engine.max_num_seqs": "1.5"}, "engine.max_num_seqs"),
        ({"model": "m", "num_replicas": 2, "cpu_threads_bind": ["0"]}, "cpu_threads_bind"),
        ({"model": "m", "predictor": {"scorer": "magic"}}, "scorer"),
    ],
)
def test_serve_config_rejects_bad_settings_naming_them(data, named):
    with pytest.raises(ValueError, match=named):
        ServeConfig.from_dict(data)


def test_union_field_errors_name_the_field_only():
    with pytest.raises(oa.APIError) as info:
        parse({"model": "m", "prompt": 42})
    assert info.value.param == "prompt"
    with pytest.raises(oa.APIError) as info:
        parse({"model": "m", "messages": [{"role": "user", "content": 5}]}, oa.ChatBody)
    assert info.value.param == "messages.0.content"


def test_slo_classes_from_yaml_and_an_unknown_class_is_a_400_listing_the_known_ones():
    from serve_app.request_input import RequestInputs

    cfg = ServeConfig.from_dict(
        {
            "model": "m",
            "scheduler": {
                "slo": {
                    "classes": [
                        {"name": "code", "e2e_s": "4"},
                        {"name": "chat", "ttft_s": 1, "tpot_s": 0.04, "weight": 2},
                    ],
                    "default": "chat",
                }
            },
        }
    )
    slos = cfg.scheduler.slo
    assert slos.get(None).name == "chat" and slos.get("code").e2e_s == 4.0
    assert ServeConfig.from_dict(cfg.to_dict()) == cfg
    inputs = RequestInputs(cfg, tokenizer=None)
    inputs.check_slo("code")
    inputs.check_slo(None)
    with pytest.raises(oa.APIError) as info:
        inputs.check_slo("batch")
    assert info.value.status == 400 and info.value.param == "slo"
    assert "code, chat" in info.value.message


@pytest.mark.parametrize(
    "classes",
    [
        [{"name": "x", "ttft_s": 1}],  # TTFT without TPOT
        [{"name": "x", "e2e_s": 1, "tpot_s": 0.1}],  # both kinds
        [{"name": "x", "e2e_s": -1}],
        [{"name": "x", "e2e_s": 1}, {"name": "x", "e2e_s": 2}],
    ],
)
def test_bad_slo_classes_are_refused(classes):
    with pytest.raises(ValueError, match="SLO class"):
        ServeConfig.from_dict({"model": "m", "scheduler.slo": {"classes": classes, "default": "x"}})
