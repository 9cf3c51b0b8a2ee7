"""Learning from served traffic, end to end on a small request log with the real encoder: the
log's bad lines and max_tokens-cut requests are counted and left out; a better candidate is
swapped in, one that is not better is refused, a failed retrain leaves the serving model, a
rollback restores the previous version, and all of it survives a restart; scoring goes on,
unchanged, while a retrain runs."""

import dataclasses
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("usearch")
pytest.importorskip("torch")

from cluster.rank_agreement import kendall_tau_b  # noqa: E402
from predictor_actor.batching import BatchingPredictor, PredictorConfig  # noqa: E402
from predictor_actor.encoder import PromptEncoder  # noqa: E402
from predictor_actor.learning import LearningConfig, OnlineLearning  # noqa: E402
from predictor_actor.log_tail import LogTail  # noqa: E402
from predictor_actor.model import RankingModel  # noqa: E402
from predictor_actor.retrain import RetrainConfig  # noqa: E402
from tests.support import PREDICTOR_FIXTURE  # noqa: E402

RETRAIN = RetrainConfig(min_requests=150, min_holdout=40, epochs=15, lr=2e-3)


def _prompts() -> list[str]:
    return [json.loads(line)["prompt"] for line in PREDICTOR_FIXTURE.read_text().splitlines()]


@pytest.fixture(scope="module")
def shipped():
    model = RankingModel.load()
    prompts = _prompts()
    return model, prompts, model.score(prompts)


def _entry(prompt: str, tokens: int, **kw) -> str:
    d = {"prompt": prompt, "output_tokens": int(tokens), "model": "m", "finish_time": 1.0}
    return json.dumps({**d, **kw}) + "\n"


def _write_log(path, prompts, tokens) -> None:
    with open(path, "a") as f:
        f.writelines(_entry(p, t) for p, t in zip(prompts, tokens, strict=True))


def _learning(tmp_path, model, encoder=None, **kw) -> OnlineLearning:
    config = LearningConfig(
        request_log=str(tmp_path / "requests.jsonl"),
        retrain_every_requests=100,
        retrain=RETRAIN,
        poll_s=3600,
        default_model="m",
        **kw,
    )
    return OnlineLearning(config, None, encoder or model.encoder)


def test_bad_lines_and_cut_requests_are_counted_and_not_learned(tmp_path):
    log = tmp_path / "requests.jsonl"
    log.write_text(
        _entry("good one", 12)
        + "{not json\n"
        + json.dumps({"prompt": 3, "output_tokens": 5})
        + "\n"
        + json.dumps({"prompt": "no length"})
        + "\n"
        + _entry("cut by its cap", 64, finish_reason="length", max_tokens=64)
        + _entry("as long as its cap", 32, max_tokens=32)
        + _entry("zero", 0)
        + _entry("good two", 7)
        + '{"prompt": "torn wri'
    )
    tail = LogTail(log)
    assert [e.prompt for e in tail.read()] == ["good one", "good two"]
    assert (tail.counts.bad_lines, tail.counts.cut, tail.counts.labels) == (4, 2, 2)
    with open(log, "a") as f:  # the torn line is finished by the next write
        f.write('te", "output_tokens": 9}\n')
    assert [e.prompt for e in tail.read()] == ["torn write"]
    log.replace(tmp_path / "requests.jsonl.1")  # rotation: the new file is read from its start
    log.write_text(_entry("after rotation", 3))
    assert [e.prompt for e in tail.read()] == ["after rotation"]


def test_better_swapped_worse_refused_failure_kept_rollback_restores(tmp_path, shipped):
    model, prompts, scores = shipped
    # Served with a shorter truncation than the shipped model's card says
    serving = PromptEncoder(dataclasses.replace(model.config.encoder, max_length=128))
    learning = _learning(tmp_path, model, serving)
    # Served answers whose lengths run against the shipped model's ranking: any candidate
    # that learns this traffic ranks its newest requests better.
    reversed_tokens = np.argsort(np.argsort(-scores)) + 1
    _write_log(tmp_path / "requests.jsonl", prompts, reversed_tokens)
    events = learning.step()
    learner = learning.learner("m")
    assert [e["event"] for e in events] == ["swap"]
    swap = events[0]
    assert swap["candidate_tau"] > swap["current_tau"] and swap["to"] == learner.version == "v0001"
    assert swap["holdout"] >= 40 and swap["train"] + swap["holdout"] == len(prompts)
    assert len(learner.memory) == len(prompts)
    # the new version's card names the encoder whose features it learned from, and the
    # retrain on top of the serving model's training
    card = learner.store.load().config
    assert card.encoder == serving.config != model.config.encoder
    assert card.training["data"] == model.config.training["data"]
    retrained = card.training["online_retrain"]
    assert (retrained["from_version"], retrained["candidate"]) == ("v0000", swap["candidate"])
    swapped = learner.model.score(prompts)
    assert kendall_tau_b(swapped, reversed_tokens) > kendall_tau_b(scores, reversed_tokens)

    # Traffic that the serving model already orders perfectly: no candidate can beat it.
    agree = np.argsort(np.argsort(swapped)) + 1
    _write_log(tmp_path / "requests.jsonl", prompts, agree)
    events = learning.step()
    assert [e["event"] for e in events] == ["refused"]
    assert events[0]["candidate_tau"] <= events[0]["current_tau"]
    assert learner.version == "v0001"

    # A retrain that fails (too few labels to split) leaves the serving model.
    learner.tokens, learner.features = learner.tokens[:10], learner.features[:10]
    event = learning.retrain(learner)
    assert event["event"] == "failed" and "too few" in event["error"]
    assert learner.version == "v0001"
    np.testing.assert_allclose(learner.model.score(prompts[:20]), swapped[:20], atol=1e-5)

    rollback = learning.rollback("m")
    assert (rollback["from"], rollback["to"]) == ("v0001", "v0000") == ("v0001", learner.version)
    np.testing.assert_allclose(learner.model.score(prompts[:20]), scores[:20], atol=1e-5)
    with pytest.raises(Exception, match="nothing to roll back"):
        learning.rollback("m")
    learning.save()

    # A restarted predictor serves what served before, and remembers what it had learned.
    again = _learning(tmp_path, model)
    back = again.learner("m")
    assert back.version == "v0000" and len(back.memory) == 2 * len(prompts)
    assert len(back.tokens) == 10 and again.step() == []  # the log is not read twice
    kinds = [e["event"] for e in back.store.events()]
    assert kinds == ["swap", "refused", "failed", "rollback"]


def test_scoring_goes_on_unchanged_while_a_retrain_runs(tmp_path, shipped):
    model, prompts, scores = shipped
    log = tmp_path / "requests.jsonl"
    _write_log(log, prompts, np.argsort(np.argsort(-scores)) + 1)
    config = LearningConfig(
        request_log=str(log),
        retrain_every_requests=10**6,  # retrain only when this test says so
        # long enough a retrain for several scoring batches to run during it
        retrain=RetrainConfig(min_requests=150, min_holdout=40, epochs=600),
        poll_s=3600,
        default_model="m",
    )
    predictor = BatchingPredictor(PredictorConfig(learning=config))
    learning = predictor.learning
    learning.step()  # memory and labels in, no retrain
    learner = learning.learner("m")
    probe = prompts[:16]
    before = [p.score for p in predictor.score_batch(probe)]
    worker = threading.Thread(target=learning.retrain, args=(learner,))
    worker.start()
    during = 0
    while worker.is_alive():
        if learner.retraining:
            got = predictor.score_batch(probe)
            if got[0].version == "v0000":  # scored before the swap at the retrain's end
                np.testing.assert_allclose([p.score for p in got], before, atol=1e-6)
                during += 1
        time.sleep(0.01)
    worker.join()
    assert during >= 3  # scored many batches while the retrain ran
    event = learner.store.events()[-1]
    assert event["event"] == "swap"
    after = predictor.score_batch(probe)
    assert after[0].version == "v0001" and [p.score for p in after] != before
    assert predictor.health()["learning"]["models"]["m"]["version"] == "v0001"


def test_kept_labels_of_other_features_are_dropped_not_trained_on(tmp_path, shipped, caplog):
    """Labels kept for a model of other features (e.g. one from before the length cues) cannot
    train the serving model: they are dropped, with a warning, and learning starts afresh."""
    from predictor_actor.learning import served_dir

    model, _, _ = shipped
    root = served_dir(tmp_path / "predictor-state", "m")
    root.mkdir(parents=True)
    np.savez(root / "examples.npz", features=np.zeros((5, 7), np.float16), tokens=np.ones(5))
    learning = _learning(tmp_path, model)
    with caplog.at_level("WARNING"):
        learner = learning.learner("m")
    assert learner.features.shape == (0, model.config.encoder.feature_dim)
    assert "dropping 5 kept labels" in caplog.text
