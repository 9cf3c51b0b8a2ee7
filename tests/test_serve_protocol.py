"""The serving front end's pure parts: OpenAI request validation, length limits, settings."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_serve_config_takes_slo_admission_and_keeps_the_queue_bounds():
    cfg = ServeConfig.from_dict(
        {
            "model": "m",
            "scheduler": {
                "admission": {"slo_unreachable": "demote", "best_effort_class": "default"}
            },
        }
    )
    admission = cfg.scheduler.admission
    assert (admission.slo_unreachable, admission.best_effort_class) == ("demote", "default")
    assert admission.max_queued == 1024  # the service's bounds stay
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
        ({"model": "m", "scheduler.admission.slo_unreachable": "drop"}, "slo_unreachable"),
        ({"model": "m", "scheduler.admission.slo_unreachable": "demote"}, "best_effort_class"),
        (
            {"model": "m", "scheduler.admission": {"best_effort_class": "bulk"}},
            "best_effort_class: unknown SLO class 'bulk'; known: default",
        ),
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


# ---- the front door's body checks (serve_app/limits.py) and the known 500s -----------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "prompt": "x", "stop": ""}, "stop"),
        ({"model": "m", "prompt": "x", "stop": ["\n", ""]}, "stop"),
        ({"model": "m", "prompt": "x", "stop": ["s"] * 17}, "stop"),
        ({"model": "m", "prompt": "x", "seed": 2**70}, "seed"),
        ({"model": "m", "prompt": "x", "seed": 2**64}, "seed"),
        ({"model": "m", "prompt": "x", "seed": -1}, "seed"),
        ({"model": "m", "prompt": "x", "priority": 2**40}, "priority"),
    ],
)
def test_values_the_engines_cannot_take_are_400_naming_the_field(body, param):
    with pytest.raises(oa.APIError) as info:
        parse(body)
    assert (info.value.status, info.value.param) == (400, param)


def test_the_largest_seed_and_four_stops_are_taken():
    body = parse({"model": "m", "prompt": "x", "seed": 2**64 - 1, "stop": ["a", "b", "c", "d"]})
    assert body.seed == 2**64 - 1 and len(body.stop_list()) == 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from serve_app.request_input import RequestInputs
    from serve_app.tiny_model import TinySpec, build_tokenizer

    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(TinySpec(vocab_size=512, corpus_bytes=100_000), out)
    cfg = ServeConfig.from_dict(
        {"model": "m", "model_name": "m", "engine.max_model_len": 256, "default_max_tokens": 64}
    )
    return RequestInputs(cfg, AutoTokenizer.from_pretrained(out))


@pytest.mark.parametrize(
    ("raw", "body_type", "param", "code"),
    [
        ('{"model": "m", "prompt": "a\\ud800b"}', oa.CompletionBody, "prompt", "invalid_unicode"),
        (
            '{"model": "m", "messages": [{"role": "user", "content": "\\udfff"}]}',
            oa.ChatBody,
            "messages.0.content",
            "invalid_unicode",
        ),
        ('{"model": "m", "prompt": "x", "stop": ["\\ud800"]}', oa.CompletionBody, "stop.0", None),
        ('{"model": "m", "prompt": "x", "user": {"\\ud800": 1}}', oa.CompletionBody, None, None),
        ("[" * 100_000 + "]" * 100_000, oa.CompletionBody, None, "too_deeply_nested"),
        (
            '{"model": "m", "prompt": "x", "extra": ' + "[" * 40 + "]" * 40 + "}",
            oa.CompletionBody,
            None,
            "too_deeply_nested",
        ),
    ],
)
def test_bodies_that_were_500s_are_400s(inputs, raw, body_type, param, code):
    with pytest.raises(oa.APIError) as info:
        to_input = inputs.chat if body_type is oa.ChatBody else inputs.completion
        asyncio.run(inputs.from_http(raw.encode(), body_type, to_input, None))
    error = info.value
    assert error.status == 400 and error.type == "invalid_request_error"
    if param is not None:
        assert error.param == param
    if code is not None:
        assert error.code == code


def test_a_body_at_the_depth_limit_is_taken(inputs):
    nested = "[" * 30 + "]" * 30  # the body object itself is level 1
    raw = ('{"model": "m", "prompt": "hello", "extra": ' + nested + "}").encode()
    body, inp = asyncio.run(inputs.from_http(raw, oa.CompletionBody, inputs.completion, None))
    assert inp.prompt_token_ids and body.prompt == "hello"


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(inputs):
    """20 MB of prompt: refused from its length alone, in milliseconds, by both paths."""
    per = inputs.chars_per_token
    assert per == max(len(t) for t in inputs.tokenizer.get_vocab())
    prompt = "x" * 20_000_000
    start = time.perf_counter()
    with pytest.raises(oa.APIError) as info:
        inputs.completion(oa.CompletionBody(model="m", prompt=prompt))
    assert time.perf_counter() - start < 0.1
    assert info.value.param == "prompt" and info.value.code == "context_length_exceeded"
    chat = oa.ChatBody(model="m", messages=[{"role": "user", "content": prompt}])
    with pytest.raises(oa.APIError) as info:
        inputs.chat(chat)
    assert info.value.param == "messages"
    # Just under the bound the tokenizer decides (and refuses by the exact count).
    with pytest.raises(oa.APIError) as info:
        inputs.completion(oa.CompletionBody(model="m", prompt="x" * (per * 255)))
    assert "characters" not in info.value.message


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=300))
def test_the_character_bound_never_refuses_a_prompt_that_fits(inputs, text):
    """No text takes fewer tokens than its characters over the longest token's."""
    tokens = len(inputs.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tokens * inputs.chars_per_token >= len(text)


def test_an_unexpected_error_is_a_short_500(inputs):
    def broken(body):
        raise RuntimeError("Traceback (most recent call last):\n  File /secret/path.py ...")

    with pytest.raises(oa.APIError) as info:
        asyncio.run(
            inputs.from_http(b'{"model": "m", "prompt": "x"}', oa.CompletionBody, broken, None)
        )
    assert info.value.status == 500 and "secret" not in info.value.message
    assert oa.short("first line\nTraceback ...") == "first line"
    assert len(oa.short("y" * 1000)) == 300


def test_the_proto_states_the_default_max_tokens_the_server_uses() -> None:
    """The gRPC contract's comment gives the defaults a client gets without max_tokens."""
    import dataclasses
    import re
    from pathlib import Path

    proto = Path(__file__).parents[1] / "serve_app/proto/rankserve.proto"
    line = next(ln for ln in proto.read_text().splitlines() if "int32 max_tokens" in ln)
    chat = next(f for f in dataclasses.fields(ServeConfig) if f.name == "default_max_tokens")
    from serve_app.request_input import COMPLETION_DEFAULT_MAX_TOKENS as completion

    assert re.search(rf"{completion} for a prompt", line)
    assert re.search(rf"default_max_tokens, {chat.default} unless set", line)
