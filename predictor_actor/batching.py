"""Dynamic batching of scoring requests, without Ray (the Ray actor in predictor_actor.actor
hosts one of these).

Callers submit prompts concurrently; a single loop gathers them into batches of at most
`max_batch_size`, waiting at most `max_wait_ms` after the first prompt of a batch, and scores
each batch in one call to the model (on a worker thread, so that submissions keep arriving
while it runs). A prompt that makes its batch fail is scored alone, and by the heuristic if it
fails alone too: a bad prompt never fails its batch. If the model cannot be loaded at all, every
prompt is scored by the prompt-length heuristic and `health()` says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from predictor_actor.encoder import HIDDEN
from predictor_actor.heuristic import HEURISTIC_NAME, heuristic_lengths, heuristic_scores
from predictor_actor.learning import LearningConfig, OnlineLearning
from predictor_actor.text import clean_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PredictorConfig:
    model_dir: str | None = None  # None: the shipped default model
    max_batch_size: int = 64
    max_wait_ms: float = 5.0  # how long the first prompt of a batch waits for company
    # Encoder truncation in tokens; None: the truncation the model was trained with.
    max_length: int | None = None
    # Within a batch, prompts are encoded in length-sorted chunks of this many, so padding
    # follows each chunk's longest prompt (see EncoderConfig.chunk_size).
    chunk_size: int = 16
    # int8 dynamic quantization of the encoder's linear layers: faster on CPU, slightly
    # different scores (measured in docs/benchmarks.md, predictor-actor). None: as the model
    # was trained.
    quantize: bool | None = None
    # bfloat16 encoding (EncoderConfig.bf16). None: where the CPU has native bf16 and the
    # encoder is not int8.
    bf16: bool | None = None
    # Learning from the request log (retrieval memory, retrain and swap); off without a log.
    learning: LearningConfig = field(default_factory=LearningConfig)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.quantize and self.bf16:
            raise ValueError("quantize (int8) and bf16 are two precisions: choose one")


@dataclass(frozen=True, slots=True)
class Prediction:
    score: float  # rank score, higher = longer answer
    predicted_tokens: float  # predicted answer length in tokens
    fallback: bool  # True: scored by the prompt-length heuristic, not the model
    version: str | None = None  # the served model's predictor version (learning on)


@dataclass(slots=True)
class _Stats:
    batches: int = 0
    prompts: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0
    failed_batches: int = 0  # batches that had to be scored prompt by prompt
    heuristic_prompts: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # last 1,000


def _text_or_none(prompt: object) -> str | None:
    try:
        return clean_prompt(prompt)
    except Exception:  # e.g. an object whose str() raises
        return None


class BatchingPredictor:
    def __init__(self, config: PredictorConfig = PredictorConfig()) -> None:
        self.config = config
        self.model = None
        self.error: str | None = None
        self.model_description = HEURISTIC_NAME
        try:
            self.model = self._load_model(config)
            self.model_description = (
                f"{config.model_dir or 'default model'} ({self.model.config.loss})"
            )
        except Exception as e:  # any failure to load means: serve with the heuristic
            self.error = f"{type(e).__name__}: {e}"
            log.error(
                "PREDICTOR MODEL NOT LOADED (%s): %s. Scoring every prompt with the %s until "
                "the actor is restarted with a working model.",
                config.model_dir or "default model",
                self.error,
                HEURISTIC_NAME,
            )
        self.learning: OnlineLearning | None = None
        if self.model is not None and config.learning.request_log:
            try:
                self.learning = OnlineLearning(
                    config.learning, config.model_dir, self.model.encoder
                )
                self.learning.start()
            except Exception as e:  # serve on with the start model, unlearned
                log.exception("predictor learning not started: %s", e)
                self.error = f"learning: {type(e).__name__}: {e}"
        self._stats = _Stats()
        self._queue: asyncio.Queue | None = None
        self._loop_task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor")

    @staticmethod
    def _load_model(config: PredictorConfig):
        from predictor_actor.encoder import PromptEncoder, native_bf16
        from predictor_actor.model import RankingModel

        model = RankingModel.load(config.model_dir)
        quantize = model.config.encoder.quantize if config.quantize is None else config.quantize
        enc_cfg = replace(
            model.config.encoder,
            chunk_size=config.chunk_size,
            quantize=quantize,
            max_length=config.max_length or model.config.encoder.max_length,
            bf16=native_bf16() and not quantize if config.bf16 is None else config.bf16,
        )
        model = RankingModel(model.config, model.head, PromptEncoder(enc_cfg))
        model.predict_tokens(["warm-up prompt"])  # fail here, not on the first request
        return model

    # --- scoring -------------------------------------------------------------------------
    def _model_predict(
        self, prompts: list[str], served: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, str | None]:
        feats = self.model.encoder.features(prompts)
        if self.learning is None:
            scores = self.model.scores_from_features(feats)
            return scores, self.model.tokens_from_scores(scores), None
        self.learning.remember(prompts, feats)
        learner = self.learning.learner(served)
        model = learner.model  # one reference: a swap lands between batches, never inside one
        raw = model.scores_from_features(feats)
        log_length = np.log1p(model.tokens_from_scores(raw))
        if learner.memory is not None and len(learner.memory):
            log_length, _ = learner.memory.blend(log_length, feats[:, :HIDDEN])
        # Scores are predicted log lengths, comparable across swaps; the raw score breaks ties
        # where the length calibration is flat.
        return log_length + 1e-4 * raw, np.expm1(log_length), learner.version

    def _heuristic(self, prompts: list[str]) -> list[Prediction]:
        self._stats.heuristic_prompts += len(prompts)
        return [
            Prediction(float(s), float(t), True)
            for s, t in zip(heuristic_scores(prompts), heuristic_lengths(prompts), strict=True)
        ]

    def score_batch(self, prompts: list, served: list | None = None) -> list[Prediction]:
        """Score one batch synchronously (`served`: each prompt's served model, for learning
        per model); never raises for a bad prompt."""
        served = served or [None] * len(prompts)
        if len(set(served)) > 1:  # one call into the model per served model
            out: list[Prediction | None] = [None] * len(prompts)
            for name in dict.fromkeys(served):
                idx = [i for i, s in enumerate(served) if s == name]
                for i, p in zip(
                    idx, self.score_batch([prompts[i] for i in idx], [name]), strict=True
                ):
                    out[i] = p
            return out
        texts = [_text_or_none(p) for p in prompts]
        if self.model is None:
            return self._heuristic(["" if t is None else t for t in texts])
        if None not in texts:
            try:
                s, t, v = self._model_predict(texts, served[0])
                return [Prediction(float(a), float(b), False, v) for a, b in zip(s, t, strict=True)]
            except Exception:
                log.exception(
                    "scoring a batch of %d failed; scoring its prompts one by one", len(texts)
                )
        self._stats.failed_batches += 1
        out = []
        for text in texts:
            try:
                if text is None:
                    raise ValueError("prompt is not text")
                s, t, v = self._model_predict([text], served[0])
                out.append(Prediction(float(s[0]), float(t[0]), False, v))
            except Exception as e:
                log.warning("a prompt cannot be scored (%s); scored by the heuristic", e)
                out += self._heuristic(["" if text is None else text])
        return out

    # --- batching ------------------------------------------------------------------------
    async def predict_many(self, prompts: list, served: str | None = None) -> list[Prediction]:
        """Predictions for `prompts`, in order; they may share batches with other callers.
        `served`: the served model the prompts are for (None: the default one)."""
        if self._loop_task is None or self._loop_task.done():
            self._queue = asyncio.Queue()
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())
        loop = asyncio.get_running_loop()
        futures = []
        for p in prompts:
            fut = loop.create_future()
            self._queue.put_nowait((p, served, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def predict(self, prompt, served: str | None = None) -> Prediction:
        return (await self.predict_many([prompt], served))[0]

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.config.max_wait_ms / 1000.0
            while len(batch) < self.config.max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor,
                    self.score_batch,
                    [p for p, _, _ in batch],
                    [s for _, s, _ in batch],
                )
            except Exception as e:  # score_batch does not raise; this guards the loop itself
                log.exception("predictor batch loop error")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            st = self._stats
            st.busy_s += time.perf_counter() - t0
            st.batches += 1
            st.prompts += len(batch)
            st.largest_batch = max(st.largest_batch, len(batch))
            st.batch_sizes = st.batch_sizes[-999:] + [len(batch)]
            for (_, _, fut), res in zip(batch, results, strict=True):
                if not fut.done():  # the caller may have given up (cancelled)
                    fut.set_result(res)

    def health(self) -> dict:
        st = self._stats
        return {
            "status": "degraded" if self.model is None else "ok",
            "fallback": self.model is None,
            "error": self.error,
            "scorer": self.model_description,
            "max_length": self.model.encoder.config.max_length if self.model else None,
            "encoding": self.model.encoder.config.precision if self.model else None,
            "max_batch_size": self.config.max_batch_size,
            "max_wait_ms": self.config.max_wait_ms,
            "batches": st.batches,
            "prompts": st.prompts,
            "mean_batch_size": st.prompts / st.batches if st.batches else 0.0,
            "recent_mean_batch_size": float(np.mean(st.batch_sizes)) if st.batch_sizes else 0.0,
            "largest_batch": st.largest_batch,
            "busy_seconds": round(st.busy_s, 3),
            "failed_batches": st.failed_batches,
            "heuristic_prompts": st.heuristic_prompts,
            "learning": self.learning.status() if self.learning is not None else None,
        }
