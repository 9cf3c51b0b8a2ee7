"""Predictor benchmarks (issue: output-length ranking predictor).

  quality   Kendall tau of the ListMLE model and of the baselines (regression on log length,
            length-bucket classification, prompt-length heuristic), all trained the same way on
            the shipped models' data (GPTeacher + arena-hard GPT-4 training splits), on every
            held-out data set; a train-on-one,
            test-on-another table; and the shipped models' cards (--write-cards)
  actor     the shared predictor Ray actor under concurrent load: prompts/s and p50/p99
            latency at truncation 128, 256 and 512 tokens, and the tau each truncation costs
  finetune  frozen encoder vs fine-tuning it, within the 30-minute training budget
  train-time  wall time of `rankserve predictor train` on 10k prompts, cold cache

Reads prompt files in runs/data, made from ../shared/datasets on first use
(benchmarks/prompt_sets.py). Prints the figures and writes them to docs/benchmarks.md.

    python -m benchmarks.bench_predictor quality --write-cards
    python -m benchmarks.bench_predictor actor
    python -m benchmarks.bench_predictor finetune
    python -m benchmarks.bench_predictor train-time
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.prompt_sets import (
    ALPACA_GPT4_TURBO,
    ALPACA_LLAMA3_8B,
    ALPACA_LLAMA3_70B,
    ARENA_GPT4,
    ARENA_GPT35,
    ARENA_O3_MINI,
    CODE_ALPACA,
    GPTEACHER,
    SHIPPED_TRAINING,
    Source,
    prompt_file,
    split_files,
)
from benchmarks.report import update_section
from cluster.rank_agreement import kendall_tau_b
from predictor_actor.embeddings import prompt_features
from predictor_actor.evaluate import evaluate
from predictor_actor.heuristic import heuristic_scores
from predictor_actor.model import DEFAULT_LENGTH_MODEL_DIR, DEFAULT_MODEL_DIR, RankingModel
from predictor_actor.model_card import write_model_card
from predictor_actor.records import LabelledPrompts, load_labelled
from predictor_actor.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "rankserve"
RUNS = ROOT / "runs" / "predictor"

# name -> (source, split): the held-out sets every model is measured on, each cut down to the
# prompts the shipped models never saw (arena-hard v0.1 prompts are shared by its models)
EVAL_SETS = {
    "gpteacher (test split)": (GPTEACHER, "test"),
    "arena_hard gpt-4-0314 (test split)": (ARENA_GPT4, "test"),
    "arena_hard gpt-3.5-turbo-0125": (ARENA_GPT35, None),
    "arena_hard o3-mini": (ARENA_O3_MINI, None),
    "alpaca_eval Llama-3-8B-Instruct": (ALPACA_LLAMA3_8B, None),
    "alpaca_eval Llama-3-70B-Instruct": (ALPACA_LLAMA3_70B, None),
    "alpaca_eval gpt4_1106_preview": (ALPACA_GPT4_TURBO, None),
    "code_alpaca": (CODE_ALPACA, None),
}
# data sets of the train-on-one, test-on-another table
CROSS_SETS = {
    "gpteacher": GPTEACHER,
    "arena_hard (gpt-4-0314)": ARENA_GPT4,
    "alpaca_eval (Llama-3-8B)": ALPACA_LLAMA3_8B,
    "code_alpaca": CODE_ALPACA,
}
LOSSES = ("listmle", "regression", "classification")


def _load(source: Source, split: str | None = None) -> LabelledPrompts:
    return load_labelled([prompt_file(source, split)])


def _unseen(data: LabelledPrompts, seen: set[str]) -> LabelledPrompts:
    return data.subset(np.array([i for i, p in enumerate(data.prompts) if p not in seen], int))


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _train_split(source: Source) -> tuple[LabelledPrompts, LabelledPrompts]:
    """(train, val + test) of a cross-table data set: 80% / 20% of its prompts."""
    return _load(source, "train"), load_labelled(split_files((source,), "val", "test"))


def quality(write_cards: bool) -> None:
    t0 = time.monotonic()
    train_files = split_files(SHIPPED_TRAINING, "train")
    train_data = load_labelled(train_files)
    # The epoch is chosen on 10% of the training split's prompts, so that the validation and
    # test splits stay unseen by every choice made: the simulator's bursts draw from both.
    seen = set(train_data.prompts)
    evals = {name: _unseen(_load(*where), seen) for name, where in EVAL_SETS.items()}
    models: dict[str, RankingModel] = {}
    for loss in LOSSES:
        models[loss] = train(
            train_data,
            RUNS / f"shipped-{loss}",
            TrainConfig(loss=loss),
            cache_dir=CACHE,
            data_names=[f.name for f in train_files],
        )
        print(f"trained {loss}: val tau {models[loss].config.training['val_kendall_tau']:.3f}")
    results = {
        loss: {n: evaluate(m, d, cache_dir=CACHE) for n, d in evals.items()}
        for loss, m in models.items()
    }

    lines = [
        f"Models trained on the training splits of GPTeacher and arena-hard (GPT-4 answers; "
        f"{len(train_data):,} prompts, 10% of which, by prompt, choose the epoch; the validation "
        "and test splits are never used), frozen all-MiniLM-L6-v2 features (the first of its 6 "
        "layers: the default, about as good here and ~3x faster), truncation 256, "
        "the same head and schedule for every loss. Kendall tau-b over the whole held-out file "
        "(in brackets: mean tau over random lists of 32). Every set is held out by prompt: rows "
        "whose prompt is in the training splits are dropped (n counts what is left); only "
        "the two test splits are in the training distribution. Lengths in tokens of the "
        "project tokenizer.",
        "",
        "| held-out set | n | ListMLE | regression (log length) | classification (8 buckets) "
        "| prompt-length heuristic |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in EVAL_SETS:
        r = {loss: results[loss][name] for loss in LOSSES}
        cells = [
            f"{_fmt(r[loss]['kendall_tau'])} ({_fmt(r[loss]['mean_list_tau'])})" for loss in LOSSES
        ]
        lines.append(
            f"| {name} | {r['listmle']['n']} | "
            + " | ".join(cells)
            + f" | {_fmt(r['listmle']['heuristic_kendall_tau'])} |"
        )
    means = {loss: np.mean([results[loss][n]["kendall_tau"] for n in EVAL_SETS]) for loss in LOSSES}
    heur = np.mean([results["listmle"][n]["heuristic_kendall_tau"] for n in EVAL_SETS])
    lines.append(
        "| mean over the sets | | "
        + " | ".join(_fmt(means[loss]) for loss in LOSSES)
        + f" | {_fmt(heur)} |"
    )
    print("\n".join(lines))
    update_section("predictor-quality", "\n".join(lines))

    # train on one, test on another
    splits = {name: _train_split(f) for name, f in CROSS_SETS.items()}
    table = {}
    for tr_name, (tr, _) in splits.items():
        model = train(
            tr, RUNS / f"cross-{tr_name.split()[0]}", TrainConfig(), cache_dir=CACHE, progress=False
        )
        for te_name, (_, te) in splits.items():
            table[tr_name, te_name] = evaluate(model, te, cache_dir=CACHE)["kendall_tau"]
    names = list(CROSS_SETS)
    lines = [
        "ListMLE models, each trained on the training split of one data set (80% of its prompts, "
        "10% of which choose the epoch), tested on the held-out prompts of each (its validation "
        "and test splits, the other 20%). Kendall tau-b; diagonal = "
        "in-distribution. Last row: the prompt-length heuristic.",
        "",
        "| trained on \\ tested on | "
        + " | ".join(f"{n} (n={len(splits[n][1])})" for n in names)
        + " |",
        "|---|" + "---:|" * len(names),
    ]
    for tr_name in names:
        lines.append(
            f"| {tr_name} ({len(splits[tr_name][0])}) | "
            + " | ".join(_fmt(table[tr_name, te]) for te in names)
            + " |"
        )
    lines.append(
        "| prompt-length heuristic | "
        + " | ".join(
            _fmt(
                kendall_tau_b(heuristic_scores(splits[te][1].prompts), splits[te][1].output_tokens)
            )
            for te in names
        )
        + " |"
    )
    print("\n".join(lines))
    update_section("predictor-cross-dataset", "\n".join(lines))

    if write_cards:
        for loss, directory in (
            ("listmle", DEFAULT_MODEL_DIR),
            ("regression", DEFAULT_LENGTH_MODEL_DIR),
        ):
            models[loss].save(directory)
            write_model_card(
                directory, RankingModel.load(directory), results[loss], notes=_CARD_NOTES
            )
            print(f"wrote {directory}")
    print(f"quality benchmark: {time.monotonic() - t0:.0f} s")


_CARD_NOTES = """## Notes

- Licence of the training data: GPTeacher (teknium1/GPTeacher, MIT; GPT-4 outputs, OpenAI terms
  apply) and arena-hard (lm-sys/arena-hard-auto, Apache-2.0; prompts from Chatbot Arena users,
  gpt-4-0314 answers under OpenAI's terms). No non-commercial data (alpaca_eval, code_alpaca) was
  used for training; those sets are used for evaluation only.
- GPTeacher prompts are self-instruct style (GPT-4 wrote prompts and answers); the arena-hard
  prompts are real user questions, which is why they are in: they make the ranking transfer
  better to real traffic. Still, retrain on your own request log (docs/predictor.md) for your
  model.
- Reproduce: `python -m benchmarks.bench_predictor quality --write-cards` (makes the prompt
  files in runs/data from ../shared/datasets), or `rankserve predictor train --data
  runs/data/gpteacher_train.jsonl runs/data/arena_hard_gpt-4-0314_train.jsonl --out DIR`."""


TRUNCATIONS = (128, 256, 512)
# (truncation, int8 quantization (None: as the model was trained), prompts per encoder chunk)
# served by the actor; chunk 64 = the whole batch in one padded forward pass
VARIANTS = ((128, None, 16), (256, None, 16), (512, None, 16), (256, True, 16), (256, None, 64))
LOAD_SETS = {  # prompts sent to the actor: self-instruct prompts, and long real user prompts
    "gpteacher test split": (GPTEACHER, "test"),
    "arena_hard gpt-4-0314": (ARENA_GPT4, None),
}
TAU_SETS = (
    "gpteacher (test split)",
    "arena_hard gpt-4-0314 (test split)",
    "alpaca_eval Llama-3-8B-Instruct",
)


async def _closed_loop(actor, prompts: list[str], concurrency: int) -> tuple[float, np.ndarray]:
    """`concurrency` clients, each sending one prompt at a time; (wall seconds, latencies)."""
    latencies: list[float] = []
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < len(prompts):
            prompt = prompts[next_index]
            next_index += 1
            t = time.perf_counter()
            await actor.score.remote(prompt)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - t0, np.asarray(latencies)


def actor_bench(
    requests: int,
    concurrency: int,
    max_batch_size: int,
    max_wait_ms: float,
    torch_threads: int | None,
) -> None:
    import ray

    from predictor_actor.actor import start_predictor_actor
    from predictor_actor.batching import PredictorConfig

    model = RankingModel.load(DEFAULT_MODEL_DIR)
    trained = model.config.encoder

    def _encoding(quantize: bool | None) -> str:
        int8 = trained.quantize if quantize is None else quantize
        return f"{'int8' if int8 else 'fp32'}, {trained.layers} layer{'s' if trained.layers > 1 else ''}"

    load_sets = {name: _load(*where).prompts for name, where in LOAD_SETS.items()}
    rows = []
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=2,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        for length, quantize, chunk in VARIANTS:
            config = PredictorConfig(
                max_length=length,
                max_batch_size=max_batch_size,
                max_wait_ms=max_wait_ms,
                quantize=quantize,
                chunk_size=chunk,
            )
            actor = start_predictor_actor(config, name=None, torch_threads=torch_threads)
            variant = f"{length} {_encoding(quantize)}, chunks of {chunk}"
            health = ray.get(actor.health.remote())
            assert health["status"] == "ok", health
            for name, pool in load_sets.items():
                rng = np.random.default_rng(0)
                prompts = [pool[i] for i in rng.integers(0, len(pool), requests)]
                asyncio.run(_closed_loop(actor, prompts[:64], concurrency))  # warm up
                before = ray.get(actor.health.remote())
                wall, lat = asyncio.run(_closed_loop(actor, prompts, concurrency))
                after = ray.get(actor.health.remote())
                batches = after["batches"] - before["batches"]
                rows.append(
                    (
                        variant,
                        name,
                        requests / wall,
                        np.percentile(lat, 50) * 1e3,
                        np.percentile(lat, 99) * 1e3,
                        requests / max(batches, 1),
                    )
                )
                print(
                    f"truncation {variant} {name}: {rows[-1][2]:.0f} prompts/s, "
                    f"p50 {rows[-1][3]:.0f} ms, p99 {rows[-1][4]:.0f} ms, mean batch {rows[-1][5]:.1f}"
                )
            ray.kill(actor)
    finally:
        ray.shutdown()

    # tau of the shipped model served at each truncation (and quantized)
    evals = {name: _load(*EVAL_SETS[name]) for name in TAU_SETS}
    taus = {}
    for length, quantize in dict.fromkeys((n, q) for n, q, _ in VARIANTS):
        enc = replace(
            model.config.encoder,
            max_length=length,
            quantize=model.config.encoder.quantize if quantize is None else quantize,
        )
        for name, data in evals.items():
            feats = prompt_features(data.prompts, enc, cache_dir=CACHE, progress=True)
            taus[length, quantize, name] = kendall_tau_b(
                model.scores_from_features(feats), data.output_tokens
            )
    trained_at = model.config.encoder.max_length
    threads = torch_threads or "2 (the default on 2 cores)"
    lines = [
        f"One predictor actor (shipped ListMLE model: the first {trained.layers} of MiniLM's 6 "
        f"layers, {_encoding(None).split(',')[0]}, trained at truncation {trained_at}) on a "
        f"local Ray, {concurrency} concurrent closed-loop clients each sending one prompt per "
        f"call (`actor.score.remote`), {requests} prompts per row drawn at random from the set "
        f"named; batching: at most {max_batch_size} prompts / {max_wait_ms:g} ms, each batch "
        "encoded in length-sorted chunks of the size shown. Latency is per call, as the client sees it. Encoder "
        f"threads: {threads}; the clients share the same 2 cores (no other job was running). "
        "int8: dynamic quantization of the encoder's linear layers.",
        "",
        "| truncation (tokens), encoding | prompts | prompts/s | p50 latency (ms) | p99 latency (ms) "
        "| mean batch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c:.0f} | {d:.0f} | {e:.0f} | {f:.1f} |" for a, b, c, d, e, f in rows]
    tau_variants = list(dict.fromkeys((n, q) for n, q, _ in VARIANTS))
    names = [f"{n} {_encoding(q)}" for n, q in tau_variants]
    lines += [
        "",
        f"Kendall tau-b of the same model (trained at {trained_at}) when prompts are truncated to "
        "each length:",
        "",
        "| held-out set | " + " | ".join(f"truncation {n}" for n in names) + " |",
        "|---|" + "---:|" * len(tau_variants),
    ]
    for name in TAU_SETS:
        lines.append(
            f"| {name} | " + " | ".join(_fmt(taus[n, q, name]) for n, q in tau_variants) + " |"
        )
    print("\n".join(lines))
    update_section("predictor-actor", "\n".join(lines))


def finetune(minutes: float, prompts: int, max_length: int, encoder_lr: float) -> None:
    """Fine-tune the encoder and head together (ListMLE, lists of 32), starting from the shipped
    frozen-encoder model, for at most `minutes` of wall time on `prompts` training prompts;
    compare held-out tau with the frozen model's at the same truncation."""
    import torch

    from predictor_actor.encoder import EncoderConfig, PromptEncoder, length_feature
    from predictor_actor.head import listmle_loss
    from predictor_actor.text import clean_prompt

    train_data, val_data = _load(GPTEACHER, "train"), _load(GPTEACHER, "val")
    test_data = _load(GPTEACHER, "test")
    rng = np.random.default_rng(0)
    train_data = train_data.subset(rng.permutation(len(train_data))[:prompts])
    frozen = RankingModel.load(DEFAULT_MODEL_DIR)
    enc_cfg = EncoderConfig(max_length=max_length)

    def tau_of(model: RankingModel, encoder: PromptEncoder, data: LabelledPrompts) -> float:
        encoder.model.eval()
        return kendall_tau_b(
            model.scores_from_features(encoder.features(data.prompts)), data.output_tokens
        )

    encoder = PromptEncoder(enc_cfg)
    frozen_val = tau_of(frozen, encoder, val_data)
    frozen_test = tau_of(frozen, encoder, test_data)
    print(f"frozen at truncation {max_length}: val {frozen_val:.3f}, test {frozen_test:.3f}")
    head = frozen.head
    model = RankingModel(frozen.config, head, encoder)
    opt = torch.optim.AdamW(
        [
            {"params": encoder.model.parameters(), "lr": encoder_lr},
            {"params": head.parameters(), "lr": 1e-4},
        ],
        weight_decay=0.01,
    )
    texts = [clean_prompt(p) for p in train_data.prompts]
    lengths = torch.from_numpy(train_data.output_tokens)
    list_size, lists_per_step = 32, 8
    t0 = time.monotonic()
    deadline = t0 + minutes * 60
    history, seen, epoch = [], 0, 0
    while time.monotonic() < deadline:
        epoch += 1
        order = rng.permutation(len(texts))
        usable = len(order) - len(order) % (list_size * lists_per_step)
        for start in range(0, usable, list_size * lists_per_step):
            if time.monotonic() >= deadline:
                break
            idx = order[start : start + list_size * lists_per_step]
            # Dropout stays off in the encoder: the head standardises features by their frozen
            # statistics, and dropout noise on dimensions of tiny spread blows the scores up.
            encoder.model.eval()
            head.train()
            batch = [texts[i] for i in idx]
            pooled = encoder.pooled(batch)
            feats = torch.cat([pooled, torch.from_numpy(length_feature(batch)).unsqueeze(1)], dim=1)
            scores = head(feats)[:, 0].reshape(lists_per_step, list_size)
            loss = listmle_loss(scores, lengths[idx].reshape(lists_per_step, list_size))
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(idx)
            print(
                f"epoch {epoch}, {seen} prompts, {time.monotonic() - t0:.0f} s, loss {loss.item():.2f}",
                flush=True,
            )
        head.eval()
        val = tau_of(model, encoder, val_data)
        history.append((epoch, seen, time.monotonic() - t0, val))
        print(f"after epoch {epoch}: val tau {val:.3f}", flush=True)
    test = tau_of(model, encoder, test_data)
    lines = [
        f"Fine-tuning the encoder (all 6 layers, learning rate {encoder_lr:g}) and the head "
        f"together with ListMLE (lists of 32, 8 lists per step), starting from the shipped "
        f"frozen-encoder model, on {len(texts)} GPTeacher training prompts at truncation "
        f"{max_length}, for at most {minutes:g} minutes of wall time (the training budget for "
        "10k prompts), 1 torch thread on the shared 2-core machine (other jobs running).",
        "",
        "| model | prompts seen | wall time (s) | val tau | test tau |",
        "|---|---:|---:|---:|---:|",
        f"| frozen encoder (shipped) | - | - | {frozen_val:.3f} | {frozen_test:.3f} |",
    ]
    for ep, n, t, v in history[:-1]:
        lines.append(f"| fine-tuned, after pass {ep} | {n} | {t:.0f} | {v:.3f} | |")
    ep, n, t, v = history[-1]
    lines.append(f"| fine-tuned, end of budget | {n} | {t:.0f} | {v:.3f} | {test:.3f} |")
    print("\n".join(lines))
    update_section("predictor-finetune", "\n".join(lines))


def train_time(prompts: int) -> None:
    """Wall time of `rankserve predictor train` on `prompts` GPTeacher prompts from a cold
    embedding cache (encoding included), with the default settings."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        src = prompt_file(GPTEACHER, "train").read_text().splitlines()[:prompts]
        data.write_text("\n".join(src) + "\n")
        cmd = [
            "rankserve",
            "predictor",
            "train",
            "--data",
            str(data),
            "--out",
            f"{tmp}/model",
            "--cache-dir",
            f"{tmp}/cache",
        ]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True)
        wall = time.monotonic() - t0
        training = RankingModel.load(f"{tmp}/model").config.training
    lines = [
        f"`rankserve predictor train` on the first {len(src)} prompts of the GPTeacher training "
        "split, cold embedding cache, default settings (ListMLE, truncation 256, 40 epochs), "
        "2 CPU cores, no other job running; total wall includes starting the CLI.",
        "",
        "| prompts | encoding (s) | training (s) | total wall (s) | validation tau |",
        "|---:|---:|---:|---:|---:|",
        f"| {len(src)} | {training['encode_seconds']:.0f} | {training['train_seconds']:.0f} | "
        f"{wall:.0f} | {training['val_kendall_tau']:.3f} |",
    ]
    print("\n".join(lines))
    update_section("predictor-train-time", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument(
        "--write-cards",
        action="store_true",
        help="save the ListMLE and regression models as the shipped defaults, with cards",
    )
    a = sub.add_parser("actor")
    a.add_argument("--requests", type=int, default=1000)
    a.add_argument("--concurrency", type=int, default=64)
    a.add_argument("--max-batch-size", type=int, default=64)
    a.add_argument("--max-wait-ms", type=float, default=5.0)
    a.add_argument("--torch-threads", type=int, default=None)
    f = sub.add_parser("finetune")
    f.add_argument("--minutes", type=float, default=30.0)
    f.add_argument("--prompts", type=int, default=10_000)
    f.add_argument("--max-length", type=int, default=128)
    f.add_argument("--encoder-lr", type=float, default=2e-5)
    t = sub.add_parser("train-time")
    t.add_argument("--prompts", type=int, default=10_000)
    args = parser.parse_args()
    if args.what == "train-time":
        train_time(args.prompts)
    elif args.what == "quality":
        quality(args.write_cards)
    elif args.what == "actor":
        actor_bench(
            args.requests,
            args.concurrency,
            args.max_batch_size,
            args.max_wait_ms,
            args.torch_threads,
        )
    else:
        finetune(args.minutes, args.prompts, args.max_length, args.encoder_lr)


if __name__ == "__main__":
    main()
