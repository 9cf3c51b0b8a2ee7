"""The textual length cues: what they see, that a huge prompt costs no more than a normal one,
and that models trained before cues existed still load and score as they did."""

import json
import shutil
import time

import numpy as np

from predictor_actor.encoder import FEATURE_DIM, EncoderConfig
from predictor_actor.model import DEFAULT_MODEL_DIR, ModelConfig, RankingModel
from predictor_actor.prompt_cues import CUE_COUNT, prompt_cues


def test_cues_see_length_requests_tasks_and_code():
    brief, essay, code = prompt_cues(
        [
            "Answer in one word: is the sky blue?",
            "Write a detailed essay of 1000 words about rivers",
            "Fix this function:\n```python\ndef f(x): return x\n```",
        ]
    )
    assert brief.shape == (CUE_COUNT,)
    assert brief[2] == 1 and essay[2] == 0  # "one word" asks for a short answer
    assert essay[1] == 1 and essay[3] == 1 and essay[4] == 1  # 1000 words, detailed, write
    assert code[13] == 1 and code[11] == 1  # code fence, code task
    assert brief[14] == 1 and essay[14] == 0  # ends with a question mark


def test_a_huge_prompt_costs_about_what_a_normal_one_does():
    normal, huge = "Summarise this text. " * 200, "Summarise this text. " * 500_000
    t0 = time.perf_counter()
    prompt_cues([normal])
    t_normal = time.perf_counter() - t0
    t0 = time.perf_counter()
    prompt_cues([huge])
    # the counts scan the whole string once (a few ms per MB); the patterns only its ends
    assert time.perf_counter() - t0 < t_normal + 0.5


def test_a_model_without_cues_in_its_config_loads_as_trained(tmp_path):
    d = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    cues = d["encoder"].pop("cues", False)
    config = ModelConfig.from_json(d)
    assert config.encoder.cues is False
    assert EncoderConfig(cues=False).feature_dim == FEATURE_DIM
    assert EncoderConfig(cues=True).feature_dim == FEATURE_DIM + CUE_COUNT
    if not cues:  # the shipped model itself predates cues: nothing more to check
        return
    # a cue-less config against cue-trained weights is refused, not silently misread
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(d))
    try:
        RankingModel.load(tmp_path / "m")
    except Exception as e:  # ModelLoadError
        assert "features" in str(e)
    else:
        raise AssertionError("a head of the wrong width loaded")
    assert np.isfinite(RankingModel.load().score(["hello"])).all()
