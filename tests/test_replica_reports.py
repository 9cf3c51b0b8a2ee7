"""A replica's reports to the scheduler when a call fails after the scheduler applied it (Ray:
"may or may not have been executed", as around a scheduler restart): the report is sent again
under its own number, so a scheduler that applies each number once counts every token once."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray")

from cluster.runtime.protocol import GenerateCall, ReplicaReport, SubmitRequest  # noqa: E402
from cluster.runtime.replica import EngineReplica  # noqa: E402
from cluster.runtime.spec import ReplicaConfig, ReplicaSpec  # noqa: E402


class _Scheduler:
    """Applies each report number once (as SchedulerActor.report does); its first call fails
    after applying, as a call to an actor that is going away can."""

    def __init__(self) -> None:
        self.report = self
        self.seqs: list[int] = []
        self.tokens = 0
        self._applied = 0

    def remote(self, report: ReplicaReport):
        async def call():
            self.seqs.append(report.seq)
            if report.seq > self._applied:
                self._applied = report.seq
                self.tokens += sum(report.events.tokens.values())
            if len(self.seqs) == 1:
                raise ConnectionError("the actor is restarting")

        return call()


def test_a_report_that_failed_after_it_was_applied_counts_its_tokens_once():
    scheduler = _Scheduler()

    async def main():
        spec = ReplicaSpec("replica-0", "/m", replica=ReplicaConfig(kind="simulated"))
        replica = EngineReplica(spec, scheduler)
        await replica.start()
        try:
            call = GenerateCall(SubmitRequest("r", 3, 1000), 1, [1, 2, 3], 40, 0, True)
            tokens = sum([len(c.token_ids) async for c in replica.generate(call)])
            await asyncio.sleep(5 * EngineReplica.REPORT_INTERVAL_S)  # the reports settle
            return tokens
        finally:
            replica.shutdown()

    tokens = asyncio.run(main())
    assert tokens == 40
    assert scheduler.tokens == 40
    assert scheduler.seqs[1] == scheduler.seqs[0]  # the failed report, sent again as it was
