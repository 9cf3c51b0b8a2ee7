"""Build the tiny random-weight Llama that rankserve serves on machines without a GPU.

Nothing is downloaded: the BPE tokenizer is trained on the Python standard library's own source
files (present on every machine that runs Python), and the weights are random (seeded). The
model's text is noise; it exists so that the whole serving path (vLLM engines, scheduler,
streaming) runs for real on a laptop. Benchmarks force true answer lengths with `max_tokens` and
`ignore_eos`.

    python scripts/build_tiny_model.py [--out DIR] [--force]   (or: python -m serve_app.tiny_model)

Idempotent: a directory already built with the same settings is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_DIR = Path.home() / ".cache" / "rankserve" / "tiny-llama"
MARKER = "rankserve_tiny.json"

# A chat template in the ChatML style: simple, and the tokenizer has its markers as special tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 2048
    seed: int = 0
    corpus_bytes: int = 8_000_000  # of standard-library source; enough for a 4k BPE vocabulary


def corpus_files(limit_bytes: int) -> list[Path]:
    """Standard-library .py files in a fixed order, up to about `limit_bytes`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        files.append(path)
        total += size
        if total >= limit_bytes:
            break
    if not files:
        raise RuntimeError(f"no Python source files under {root} to train a tokenizer on")
    return files


def build_tokenizer(spec: TinySpec, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    files = [str(p) for p in corpus_files(spec.corpus_bytes)]
    tok.train(files, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def build_model(spec: TinySpec, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # vLLM reads generation_config.json; keep it minimal so no sampling defaults surprise anyone.
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}) + "\n"
    )


def is_built(out: Path, spec: TinySpec) -> bool:
    marker = out / MARKER
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()) == asdict(spec)
    except (OSError, json.JSONDecodeError):
        return False


def build(out: Path = DEFAULT_DIR, spec: TinySpec = TinySpec(), force: bool = False) -> Path:
    """Build the tiny model into `out` unless it is already there; returns `out`."""
    out = out.expanduser().resolve()
    if not force and is_built(out, spec):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)  # a half-built directory must not pass as built
    build_tokenizer(spec, out)
    build_model(spec, out)
    (out / MARKER).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    parser.add_argument("--force", action="store_true", help="rebuild even if already built")
    args = parser.parse_args(argv)
    out = build(args.out, force=args.force)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
