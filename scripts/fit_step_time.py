"""Fit the simulated engine's step-time profiles from the Vidur profiling tables.

Reads microsoft/vidur's per-layer operator timings (mlp.csv), TP all-reduce timings, the legacy
A100 attention table and the legacy CPU-overhead table from
../shared/datasets/vidur_profiles, fits the coefficients of cluster.sim.step_time's model for
each profile, prints the fit errors and the README's anchor checks, and writes
cluster/sim/profiles.json. See docs/step_time_model.md.

    python scripts/fit_step_time.py [--data DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from cluster.sim.step_time import PROFILES_PATH, StepTimeProfile, kv_blocks_from_memory

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "vidur_profiles"

# The 9 per-layer operators Vidur sums (mlp.csv also has `emb`, which Vidur does not use).
LAYER_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
MAX_STEP_TOKENS = 8192  # vLLM's max_num_batched_tokens default we simulate with
BLOCK_SIZE = 16
MAX_MODEL_LEN = 8192
# What torch reports as total memory of an 80 GB A100/H100 (vLLM logs "total_gpu_memory
# (79.15GiB)"), and vLLM's default utilisation.
GPU_MEMORY_GIB = 79.15
GPU_MEMORY_UTILIZATION = 0.9
# The legacy attention table's geometry per GPU (Llama-2/3-70B at TP2).
LEGACY_Q_HEADS = 32
LEGACY_KV_HEADS = 4
# The legacy CPU table's TP4 rows ran under Ray; vLLM v1 runs single-node TP with its own
# worker processes, so that Ray hop is left out.
CPU_MODEL = {1: "meta-llama/Llama-2-7b-hf", 4: "meta-llama/Llama-2-70b-hf"}
CPU_OPS = ("schedule", "sampler_e2e", "prepare_inputs_e2e", "process_model_outputs")


@dataclass(frozen=True)
class Spec:
    name: str
    gpu: str
    model_dir: str
    tp: int
    layers: int
    # Estimate of vLLM's profile-run peak (activations at 8192 batched tokens, non-torch
    # memory, CUDA graphs) per GPU; not measured here.
    reserve_gib: float


SPECS = (
    Spec("a100-llama3-8b", "a100", "Meta-Llama-3-8B", 1, 32, 2.0),
    Spec("h100-llama3-8b", "h100", "Meta-Llama-3-8B", 1, 32, 2.0),
    Spec("a100-llama3-70b-tp4", "a100", "Meta-Llama-3-70B", 4, 80, 2.5),
    Spec("h100-llama3-70b-tp4", "h100", "Meta-Llama-3-70B", 4, 80, 2.5),
)
MODEL_NAMES = {"Meta-Llama-3-8B": "Llama-3-8B", "Meta-Llama-3-70B": "Llama-3-70B"}


def mape(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - true) / true))


def load_layers(data: Path, spec: Spec) -> tuple[pd.Series, dict]:
    """Per-step non-attention time t_lin(T) in ms (L layers + TP all-reduce) and model dims."""
    path = data / "data/profiling/compute" / spec.gpu / "meta-llama" / spec.model_dir / "mlp.csv"
    df = pd.read_csv(path)
    df = df[df.num_tensor_parallel_workers == spec.tp]
    if df.empty:
        raise SystemExit(f"{path} has no rows for TP{spec.tp}")
    dims = df.iloc[0][["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size"]]
    dims = {k: int(v) for k, v in dims.items()}
    per_layer = sum(df[f"time_stats.{op}.median"] for op in LAYER_OPS)
    t_lin = per_layer.groupby(df.num_tokens).median() * spec.layers
    if spec.tp > 1:
        # Vidur: an all-reduce of the hidden state after attention and after the MLP.
        ar = pd.read_csv(data / "data/profiling/network" / f"{spec.gpu}_dgx" / "all_reduce.csv")
        ar = ar[(ar.num_workers == spec.tp) & (ar.devices_per_node == spec.tp)]
        ar = ar.groupby("size")["time_stats.all_reduce.median"].median()
        sizes = ar.index.to_numpy()
        want = t_lin.index.to_numpy() * dims["n_embd"] * 2
        nearest = np.abs(sizes[None, :] - want[:, None]).argmin(axis=1)
        t_lin = t_lin + 2 * spec.layers * ar.to_numpy()[nearest]
    return t_lin[t_lin.index <= MAX_STEP_TOKENS], dims


def fit_linear(t_lin: pd.Series) -> tuple[float, float, float]:
    """max(floor, intercept + slope * T), least squares on relative error over T <= 8192."""
    toks = t_lin.index.to_numpy(dtype=float)
    y = t_lin.to_numpy()
    big = toks >= 1024
    slope0, intercept0 = np.polyfit(toks[big], y[big], 1)
    x0 = np.array([y[toks <= 8].mean(), intercept0, slope0])

    def residual(x: np.ndarray) -> np.ndarray:
        return (np.maximum(x[0], x[1] + x[2] * toks) - y) / y

    floor, intercept, slope = least_squares(residual, x0, method="lm").x
    return float(floor), float(intercept), float(slope)


def load_attention(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.read_csv(data / "legacy/e2d00e9/data/profiling/a100/attention.csv.xz")
    t = sum(
        df[f"time_stats.{op}.median"].fillna(0.0)
        for op in ("attn_decode", "attn_prefill", "attn_input_reshape", "attn_output_reshape")
    )
    df = df.assign(t=t)
    return df[~df.is_prefill], df[df.is_prefill]


def relative_lstsq(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(features / y[:, None], np.ones_like(y), rcond=None)
    return coef


def fit_decode_attention(dec: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Per layer: c0 + c_seq * B + c_ctx * B * ctx (legacy A100 geometry)."""
    b = dec.batch_size.to_numpy(dtype=float)
    ctx = dec.kv_cache_size.to_numpy(dtype=float)
    features = np.c_[np.ones_like(b), b, b * ctx]
    coef = relative_lstsq(features, dec.t.to_numpy())
    return coef, mape(features @ coef, dec.t.to_numpy())


def fit_prefill_attention(pre: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Per layer, one chunk: c0 + c_tok * p + c_sq * p^2 + c_ctx * p * cached."""
    p = pre.prefill_chunk_size.to_numpy(dtype=float)
    kv = pre.kv_cache_size.to_numpy(dtype=float)
    features = np.c_[np.ones_like(p), p, p * p, p * kv]
    coef = relative_lstsq(features, pre.t.to_numpy())
    return coef, mape(features @ coef, pre.t.to_numpy())


def fit_cpu(data: Path, tp: int) -> tuple[float, float, float]:
    df = pd.read_csv(data / "legacy/6d98aa8/data/profiling/a100/cpu_overheads.csv")
    df = df[(df.model_name == CPU_MODEL[tp]) & (df.tensor_parallel_degree == tp)]
    y = sum(df[f"{op}_median"] for op in CPU_OPS).to_numpy()
    b = df.batch_size.to_numpy(dtype=float)
    slope, base = np.polyfit(b, y, 1)
    return float(base), float(slope), mape(base + slope * b, y)


def weight_params(dims: dict, layers: int) -> tuple[int, int, int]:
    """(all params, params of the transformer layers, LM head params) of a Llama model."""
    e, f, v = dims["n_embd"], dims["n_expanded_embd"], dims["vocab_size"]
    head_dim = e // dims["n_head"]
    kv = dims["n_kv_head"] * head_dim
    per_layer = e * (e + 2 * kv) + e * e + 3 * e * f + 2 * e
    layer_params = layers * per_layer
    return layer_params + 2 * v * e + e, layer_params, v * e


def build(data: Path) -> tuple[dict, dict, list[str]]:
    dec, pre = load_attention(data)
    dec_coef, dec_mape = fit_decode_attention(dec)
    pre_coef, pre_mape = fit_prefill_attention(pre)
    lines = [
        "legacy A100 attention (32 q / 4 kv heads per GPU), per layer, MAPE vs table rows:",
        f"  decode  {dec_coef[0]:.4f} ms + {dec_coef[1]:.3g} ms/seq + {dec_coef[2]:.3g} ms/ctx-token"
        f"  MAPE {dec_mape:.1%} ({len(dec)} rows)",
        f"  prefill {pre_coef[0]:.4f} ms + {pre_coef[1]:.3g} ms/token + {pre_coef[2]:.3g} ms*p^2"
        f" + {pre_coef[3]:.3g} ms*p*cached  MAPE {pre_mape:.1%} ({len(pre)} rows)",
    ]
    layer_fits = {(s.gpu, s.model_dir, s.tp): fit_linear(load_layers(data, s)[0]) for s in SPECS}
    profiles, report = {}, {}
    for spec in SPECS:
        t_lin, dims = load_layers(data, spec)
        floor, intercept, slope = layer_fits[(spec.gpu, spec.model_dir, spec.tp)]
        toks = t_lin.index.to_numpy(dtype=float)
        pred = np.maximum(floor, intercept + slope * toks)
        y = t_lin.to_numpy()
        bands = {}
        for lo, hi in ((1, 256), (257, 2048), (2049, MAX_STEP_TOKENS)):
            band = (toks >= lo) & (toks <= hi)
            bands[f"mape_T_{lo}_{hi}"] = mape(pred[band], y[band])
        # H100 has no attention table: decode attention is bandwidth-bound, so it scales as the
        # weight-read floors of the two GPUs; prefill attention is compute-bound, so it scales
        # as the GEMM slopes. Both ratios are measured on this model's mlp.csv.
        a100 = layer_fits[("a100", spec.model_dir, spec.tp)]
        bw_ratio = floor / a100[0] if spec.gpu != "a100" else 1.0
        flop_ratio = slope / a100[2] if spec.gpu != "a100" else 1.0
        q_per_gpu = dims["n_head"] // spec.tp
        kv_per_gpu = max(1, dims["n_kv_head"] // spec.tp)
        dec_scale = spec.layers * bw_ratio * kv_per_gpu / LEGACY_KV_HEADS
        pre_scale = spec.layers * flop_ratio * q_per_gpu / LEGACY_Q_HEADS
        # vLLM v1 runs one attention kernel per layer for the whole mixed batch: its fixed
        # cost is paid once per step, folded into the floor and intercept.
        attn_fixed = spec.layers * dec_coef[0] * bw_ratio
        cpu_base, cpu_seq, cpu_mape = fit_cpu(data, spec.tp)
        params, layer_params, head_params = weight_params(dims, spec.layers)
        # The LM head is not profiled: one read of its weights at the effective bandwidth the
        # layer floor shows (layer weights / time of a 1-token step).
        eff_bw = layer_params * 2 / spec.tp / (t_lin.iloc[0] * 1e-3)
        lm_head_ms = head_params * 2 / spec.tp / eff_bw * 1e3
        head_dim = dims["n_embd"] // dims["n_head"]
        kv_bytes = 2 * spec.layers * dims["n_kv_head"] * head_dim * 2 // spec.tp
        weight_bytes = params * 2 // spec.tp
        model = MODEL_NAMES[spec.model_dir]
        profile = StepTimeProfile(
            name=spec.name,
            description=(
                f"vLLM engine, {model} fp16 on {spec.tp} x {spec.gpu.upper()} 80GB"
                f" (TP{spec.tp}), block {BLOCK_SIZE}, max_model_len {MAX_MODEL_LEN}"
            ),
            source=(
                "Fitted by scripts/fit_step_time.py from microsoft/vidur profiling data (MIT, "
                f"Copyright (c) Microsoft Corporation): compute/{spec.gpu}/meta-llama/"
                f"{spec.model_dir}/mlp.csv"
                + (f", network/{spec.gpu}_dgx/all_reduce.csv" if spec.tp > 1 else "")
                + ", legacy A100 attention.csv (e2d00e9) and cpu_overheads.csv (6d98aa8)"
                + (
                    "; attention scaled to H100 by measured floor/slope ratios"
                    if spec.gpu != "a100"
                    else ""
                )
                + ". See cluster/sim/PROFILES_NOTICE.md."
            ),
            floor_ms=_r(floor + attn_fixed),
            intercept_ms=_r(intercept + attn_fixed),
            per_token_ms=_r(slope),
            decode_ctx_ms=_r(dec_coef[2] * dec_scale),
            decode_seq_ms=_r(dec_coef[1] * dec_scale),
            prefill_sq_ms=_r(pre_coef[2] * pre_scale),
            prefill_ctx_ms=_r(pre_coef[3] * pre_scale),
            prefill_token_ms=_r(pre_coef[1] * pre_scale),
            cpu_base_ms=_r(cpu_base),
            cpu_per_seq_ms=_r(cpu_seq),
            lm_head_ms=_r(lm_head_ms),
            num_kv_blocks=kv_blocks_from_memory(
                GPU_MEMORY_GIB,
                GPU_MEMORY_UTILIZATION,
                weight_bytes,
                spec.reserve_gib,
                kv_bytes,
                BLOCK_SIZE,
            ),
            block_size=BLOCK_SIZE,
            max_model_len=MAX_MODEL_LEN,
            num_layers=spec.layers,
            tensor_parallel=spec.tp,
            gpu_memory_gib=GPU_MEMORY_GIB,
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
            weight_bytes=weight_bytes,
            reserve_gib=spec.reserve_gib,
            kv_bytes_per_token=kv_bytes,
        )
        profiles[spec.name] = profile.to_dict()
        report[spec.name] = {
            "layers_fit_points": len(toks),
            "layers_mape": _r(mape(pred, y)),
            **{k: _r(v) for k, v in bands.items()},
            "layers_floor_ms": _r(floor),
            "layers_intercept_ms": _r(intercept),
            "layers_slope_us_per_token": _r(slope * 1e3),
            "attn_decode_mape_legacy_rows": _r(dec_mape),
            "attn_prefill_mape_legacy_rows": _r(pre_mape),
            "cpu_mape_legacy_rows": _r(cpu_mape),
            "h100_bw_ratio": _r(bw_ratio),
            "h100_flop_ratio": _r(flop_ratio),
            "effective_weight_bw_tb_s": _r(eff_bw / 1e12),
        }
        lines += describe(profile, report[spec.name], t_lin, pre, dec)
    return profiles, report, lines


def _r(x: float) -> float:
    """6 significant digits: stable across BLAS builds, small in the JSON."""
    return float(f"{x:.6g}")


def describe(
    p: StepTimeProfile, rep: dict, t_lin: pd.Series, pre: pd.DataFrame, dec: pd.DataFrame
) -> list[str]:
    from cluster.sim.step_time import StepTimeModel

    m = StepTimeModel(p)
    ms = lambda *a, **k: m.step_seconds(*a, **k) * 1e3  # noqa: E731
    L = p.num_layers
    lines = [
        f"\n== {p.name}: layers max({rep['layers_floor_ms']:.2f} ms, "
        f"{rep['layers_intercept_ms']:.2f} ms + {rep['layers_slope_us_per_token']:.1f} us/token)"
        f" over {rep['layers_fit_points']} points T<=8192: MAPE {rep['layers_mape']:.1%}"
        f" (T<=256 {rep['mape_T_1_256']:.1%}, 257-2048 {rep['mape_T_257_2048']:.1%},"
        f" 2049-8192 {rep['mape_T_2049_8192']:.1%})",
        f"   cpu {p.cpu_base_ms:.2f} ms + {p.cpu_per_seq_ms * 1e3:.1f} us/seq (MAPE "
        f"{rep['cpu_mape_legacy_rows']:.1%}); lm_head {p.lm_head_ms:.2f} ms (effective weight "
        f"bandwidth {rep['effective_weight_bw_tb_s']:.2f} TB/s); KV {p.kv_bytes_per_token} B/token"
        f" -> {p.num_kv_blocks} blocks ({p.num_kv_blocks * p.block_size} tokens)",
    ]
    if p.tensor_parallel == 1 and p.name.startswith("a100"):
        # Anchor: the Vidur-style composition of the profiled tables for one 2048-token prompt.
        row = pre[(pre.prefill_chunk_size == 2048) & (pre.kv_cache_size == 0)].t.median()
        ref = t_lin.loc[2048] + L * row + p.cpu_base_ms + p.cpu_per_seq_ms + p.lm_head_ms
        got = ms(2048, 0, 0, 2048**2, 0, 1)
        lines.append(
            f"   anchor 2048-token prefill: model {got:.1f} ms vs tables {ref:.1f} ms "
            f"({got / ref - 1:+.1%})"
        )
        row = dec[(dec.batch_size == 128) & (dec.kv_cache_size == 1024)].t.median() * 2
        ref = t_lin.loc[128] + L * row + p.cpu_base_ms + 128 * p.cpu_per_seq_ms + p.lm_head_ms
        got = ms(0, 128, 128 * 1024)
        lines.append(
            f"   anchor decode 128 x 1024 ctx: model {got:.1f} ms vs tables {ref:.1f} ms "
            f"({got / ref - 1:+.1%})"
        )
    lines += [
        f"   decode 1 seq x 1k ctx {ms(0, 1, 1024):.1f} ms (floor {p.floor_ms:.1f});"
        f" 256 x 1k {ms(0, 256, 256 * 1024):.1f} ms;"
        f" prefill 2048 {ms(2048, 0, 0, 2048**2, 0, 1):.1f} ms;"
        f" chunk 512 after 2048 cached + 64 decodes x 2k"
        f" {ms(512, 64, 64 * 2048, 512**2, 512 * 2048, 1):.1f} ms",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="vidur_profiles dir")
    parser.add_argument("--out", type=Path, default=PROFILES_PATH, help="profiles.json to write")
    args = parser.parse_args(argv)
    if not (args.data / "README.md").is_file():
        print(f"error: no Vidur profiles at {args.data}", file=sys.stderr)
        return 2
    profiles, report, lines = build(args.data)
    print("\n".join(lines))
    doc = {
        "format_version": 1,
        "generated_by": "scripts/fit_step_time.py",
        "profiles": profiles,
        "fit_report": report,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {len(profiles)} profiles to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
