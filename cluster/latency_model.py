"""How long a request will take on a replica, as the `slo` policy estimates it (ALISE, Zhao and
Wang 2024): prefill proportional to the prompt, decode n steps of a time that grows with the
batch and its context (n(a*s + b)). The step times come from the same calibrated step-time
model that the simulator runs (`cluster.sim.step_time`), so the estimate is the profile's."""

from __future__ import annotations

from functools import lru_cache

from cluster.sim.step_time import StepTimeModel, StepTimeProfile, load_profile

CONTEXT_QUANTUM = 64  # tokens


def quantized_context(context: float) -> int:
    """A mean context rounded to CONTEXT_QUANTUM, so that callers on a hot path look step
    times up in `decode_step_s`'s cache instead of computing them anew."""
    return max(CONTEXT_QUANTUM, round(context / CONTEXT_QUANTUM) * CONTEXT_QUANTUM)


class LatencyModel:
    def __init__(self, profile: StepTimeProfile) -> None:
        self.profile = profile
        self._model = StepTimeModel(profile)
        self.decode_step_s = lru_cache(maxsize=4096)(self._decode_step_s)

    @classmethod
    def named(cls, profile: str) -> LatencyModel:
        return cls(load_profile(profile))

    def _decode_step_s(self, batch: int, mean_context: int) -> float:
        """One decode step of `batch` sequences of `mean_context` tokens each: the time per
        output token of every request in that batch."""
        batch = max(1, batch)
        return self._model.step_seconds(0, batch, batch * mean_context)

    def prefill_s(self, prompt_tokens: int) -> float:
        """The prompt computed in one chunk (its own step; chunked prefill spreads it over the
        running batch's steps at about the same total cost)."""
        p = max(1, prompt_tokens)
        return self._model.step_seconds(p, 0, 0, p * p, 0, 1)

    def joined_prefill_s(self, prompt_tokens: int, batch: int, mean_context: int) -> float:
        """What the prompt adds to the steps of a running decode batch it joins (chunked
        prefill mixes them, so a short prompt costs less than a step of its own)."""
        p, ctx = max(1, prompt_tokens), batch * mean_context
        alone = self._model.step_seconds(0, batch, ctx)
        return self._model.step_seconds(p, batch, ctx, p * p, 0, 1) - alone
