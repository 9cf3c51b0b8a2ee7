"""The tiny local model: built from nothing downloaded, loadable, idempotent."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from serve_app.tiny_model import MARKER, TinySpec, build  # noqa: E402


def test_builds_a_loadable_model_once(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    spec = TinySpec(vocab_size=512, corpus_bytes=300_000)
    out = build(tmp_path / "tiny", spec)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (out / name).exists()
    tok = AutoTokenizer.from_pretrained(out)
    config = AutoConfig.from_pretrained(out)
    assert config.vocab_size == len(tok) <= 512 + 8
    assert config.hidden_size == 256 and config.num_hidden_layers == 4
    ids = tok("def main():\n    return 0")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "def main():\n    return 0"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|im_start|>assistant\n")
    assert json.loads((out / MARKER).read_text())["vocab_size"] == 512

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    start = time.monotonic()
    build(tmp_path / "tiny", spec)  # already built: nothing to do
    assert time.monotonic() - start < 1.0
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
