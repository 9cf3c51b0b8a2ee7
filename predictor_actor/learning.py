"""Learning from served traffic while serving: the predictor actor follows the request log, and
for each served model keeps a retrieval memory of what it served (predictor_actor.memory) and
retrains its ranker in the background, swapping a candidate in only when it ranks the most
recent traffic better than the serving model does (predictor_actor.retrain). Every version,
swap and refusal is kept on disk (predictor_actor.model_store), so a restart serves what served
before and `rollback` undoes a swap.

Scoring never waits for any of this: the log is read, embedded and trained on in a background
thread, and a swap is one reference assignment, picked up by the next batch.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from predictor_actor.encoder import HIDDEN, PromptEncoder
from predictor_actor.log_tail import LogTail, ServedExample
from predictor_actor.memory import MemoryConfig, RetrievalMemory
from predictor_actor.model import RankingModel
from predictor_actor.model_store import ModelStore
from predictor_actor.retrain import RetrainConfig, retrain
from predictor_actor.vector_cache import text_key

log = logging.getLogger(__name__)
_SAVE_EVERY_S = 60.0  # state written at most this often (and after every retrain)
_FEATURE_CACHE = 50_000  # features of recently scored prompts, so the log rarely re-encodes


@dataclass(frozen=True, slots=True)
class LearningConfig:
    request_log: str | None = None  # the request log to learn from; None: learning off
    state_dir: str | None = None  # versions, memory, labels; None: `<log dir>/predictor-state`
    retrain_every_requests: int = 500  # retrain after this many new labels ...
    retrain_every_s: float = 1800.0  # ... or this long after the last retrain, if any came
    memory: bool = True  # blend the retrieval memory into scores
    memory_config: MemoryConfig = field(default_factory=MemoryConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    max_examples: int = 20_000  # most recent labels kept per served model for training
    poll_s: float = 5.0  # how often the request log is read
    default_model: str = ""  # the served model of score calls (and log lines) that name none

    def __post_init__(self) -> None:
        if self.retrain_every_requests < 1 or self.retrain_every_s <= 0 or self.poll_s <= 0:
            raise ValueError("retrain_every_requests >= 1, retrain_every_s and poll_s > 0")
        if self.max_examples < self.retrain.min_requests:
            raise ValueError("max_examples must be >= retrain.min_requests")

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        return Path(self.request_log or ".").expanduser().resolve().parent / "predictor-state"


def served_dir(state: Path, served: str) -> Path:
    """Where one served model's learning state lives under the state directory."""
    return state / "served" / (re.sub(r"[^A-Za-z0-9._-]", "_", served) or "_default")


class ServedModelLearner:
    """The predictor of one served model: serving version, memory, recent labels."""

    def __init__(self, name: str, root: Path, base_dir: str | None, config: LearningConfig):
        self.name = name
        self.config = config
        self.root = root
        self.store = ModelStore(root / "models", base_dir)
        self.model = self.store.load()
        self.version = self.store.current
        self.memory = (
            RetrievalMemory.load(root / "memory", HIDDEN, config.memory_config)
            if config.memory
            else None
        )
        self.features, self.tokens = self._load_examples()
        self.pending = 0  # labels since the last retrain
        self.last_retrain = time.monotonic()
        self.retraining = False

    def _load_examples(self) -> tuple[np.ndarray, np.ndarray]:
        path = self.root / "examples.npz"
        dim = self.model.config.encoder.feature_dim
        empty = np.zeros((0, dim), dtype=np.float16), np.zeros(0, dtype=np.int64)
        try:
            with np.load(path) as z:
                features, tokens = z["features"], z["tokens"]
        except (OSError, ValueError, KeyError):
            return empty
        if features.ndim != 2 or features.shape[1] != dim:
            # Labels kept for a model with other features (e.g. before cues): not trainable now.
            log.warning(
                "%s: dropping %d kept labels with %s features (the model takes %d)",
                self.name,
                len(tokens),
                features.shape[1:],
                dim,
            )
            return empty
        return features, tokens

    def add(self, features: np.ndarray, tokens: np.ndarray) -> None:
        keep = self.config.max_examples
        self.features = np.concatenate((self.features, features.astype(np.float16)))[-keep:]
        self.tokens = np.concatenate((self.tokens, tokens.astype(np.int64)))[-keep:]
        self.pending += len(tokens)
        if self.memory is not None:
            self.memory.add(features[:, :HIDDEN], tokens)

    def due(self, now: float) -> bool:
        if len(self.tokens) < self.config.retrain.min_requests or not self.pending:
            return False
        return (
            self.pending >= self.config.retrain_every_requests
            or now - self.last_retrain >= self.config.retrain_every_s
        )

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".examples.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, features=self.features, tokens=self.tokens)
        tmp.replace(self.root / "examples.npz")
        if self.memory is not None:
            self.memory.save(self.root / "memory")


class OnlineLearning:
    """All served models' learners, the log they learn from, and the thread that does it.

    `encoder` is the serving encoder: it encodes the log's prompts, and a retrained model's
    card names it, since its head learned from its features. `remember` keeps the features of
    prompts just scored, so that most log lines need no encoding at all."""

    def __init__(
        self, config: LearningConfig, base_dir: str | None, encoder: PromptEncoder
    ) -> None:
        if not config.request_log:
            raise ValueError("learning needs a request_log to learn from")
        self.config = config
        self.base_dir = base_dir
        self.encoder = encoder
        self.root = config.state_path
        self.tail = LogTail(config.request_log)
        self._restore_tail()
        self.learners: dict[str, ServedModelLearner] = {}
        self._lock = threading.Lock()  # guards learners and the feature cache
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._saved_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.learner(config.default_model)  # load the default model's state now, not mid-call

    # --- serving side ----------------------------------------------------------------------
    def learner(self, model: str | None) -> ServedModelLearner:
        name = model or self.config.default_model
        with self._lock:
            got = self.learners.get(name)
            if got is None:
                got = ServedModelLearner(
                    name, served_dir(self.root, name), self.base_dir, self.config
                )
                self.learners[name] = got
            return got

    def remember(self, texts: list[str], features: np.ndarray) -> None:
        with self._lock:
            for t, f in zip(texts, features, strict=True):
                self._recent[text_key(t)] = f
            while len(self._recent) > _FEATURE_CACHE:
                self._recent.popitem(last=False)

    # --- learning side ---------------------------------------------------------------------
    def _features(self, texts: list[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        with self._lock:
            rows = [self._recent.get(k) for k in keys]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            encoded = self.encoder.features([texts[i] for i in missing])
            for i, row in zip(missing, encoded, strict=True):
                rows[i] = row
            self.remember([texts[i] for i in missing], encoded)
        return np.stack(rows).astype(np.float32)

    def step(self) -> list[dict]:
        """One pass: read what the log gained, learn it, retrain whoever is due. Returns the
        retrain events (swap, refused, failed) of this pass."""
        examples = self.tail.read()
        by_model: dict[str, list[ServedExample]] = {}
        for e in examples:
            by_model.setdefault(e.model or self.config.default_model, []).append(e)
        for name, group in by_model.items():
            feats = self._features([e.prompt for e in group])
            self.learner(name).add(feats, np.array([e.output_tokens for e in group]))
        events = []
        now = time.monotonic()
        for learner in list(self.learners.values()):
            if learner.due(now):
                events.append(self.retrain(learner))
        if events or (examples and now - self._saved_at >= _SAVE_EVERY_S):
            self.save()
        return events

    def retrain(self, learner: ServedModelLearner) -> dict:
        learner.retraining = True
        try:
            result = retrain(
                learner.model,
                learner.features.astype(np.float32),
                learner.tokens,
                self.config.retrain,
            )
            figures = {"model": learner.name, **result.figures()}
            if result.better:
                # Its card: the serving model's training record, and this retrain on top.
                online = {**figures, "from_version": learner.version}
                training = {**learner.model.config.training, "online_retrain": online}
                card = replace(
                    result.candidate.config, encoder=self.encoder.config, training=training
                )
                candidate = RankingModel(card, result.candidate.head, self.encoder)
                version = learner.store.add(candidate)
                event = learner.store.swap(version, figures)
                learner.model, learner.version = candidate, version
                log.warning(
                    "predictor %s: swapped %s -> %s, %s (tau %.3f vs %.3f on %d recent requests)",
                    learner.name or "(default)",
                    event["from"],
                    version,
                    result.kind,
                    result.candidate_tau,
                    result.current_tau,
                    result.holdout,
                )
            else:
                event = learner.store.record({"event": "refused", **figures})
        except Exception as e:  # a failed retrain leaves the serving model as it is
            log.exception("predictor %s: retrain failed; the serving model stays", learner.name)
            self.errors += 1
            event = learner.store.record(
                {"event": "failed", "model": learner.name, "error": f"{type(e).__name__}: {e}"}
            )
        finally:
            learner.retraining = False
            learner.pending = 0
            learner.last_retrain = time.monotonic()
        return event

    def rollback(self, model: str | None = None) -> dict:
        learner = self.learner(model)
        event = learner.store.rollback()
        learner.model, learner.version = learner.store.load(), learner.store.current
        log.warning("predictor %s: rolled back %s -> %s", learner.name, event["from"], event["to"])
        return event

    # --- state -----------------------------------------------------------------------------
    def _restore_tail(self) -> None:
        try:
            d = json.loads((self.root / "tail.json").read_text())
            self.tail.restore(int(d["inode"]), int(d["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no state yet: learn the log from its start

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for learner in list(self.learners.values()):
            learner.save()
        inode, offset = self.tail.position
        (self.root / "tail.json").write_text(json.dumps({"inode": inode, "offset": offset}))
        self._saved_at = time.monotonic()

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.config.poll_s):
                try:
                    self.step()
                except Exception:  # never let the learning thread die
                    self.errors += 1
                    log.exception("predictor learning pass failed")

        self._thread = threading.Thread(target=loop, name="predictor-learning", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.save()

    def status(self) -> dict:
        counts = asdict(self.tail.counts)
        return {
            "request_log": self.config.request_log,
            "state_dir": str(self.root),
            "labels": counts["labels"],
            "cut_by_max_tokens": counts["cut"],
            "bad_log_lines": counts["bad_lines"],
            "errors": self.errors,
            "models": {
                name: {
                    "version": lr.version,
                    "examples": int(len(lr.tokens)),
                    "since_retrain": lr.pending,
                    "retraining": lr.retraining,
                    "memory": len(lr.memory) if lr.memory is not None else None,
                    "last_events": lr.store.events(last=5),
                    "event_counts": dict(lr.store.counts),
                }
                for name, lr in list(self.learners.items())
            },
        }
