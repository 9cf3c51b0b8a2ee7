"""The ingress's lease renewal, without Ray: it goes on through everything one renewal can meet
while the scheduler restarts (an error, a stray cancellation of the call's future, a call that
never answers) and ends only when stopped."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.lease_renewal import LeaseRenewal


async def _hang() -> None:
    await asyncio.sleep(3600)


async def _stray_cancel() -> None:
    """What awaiting a call whose future Ray cancelled raises: CancelledError, though nobody
    cancelled the awaiting task."""
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


async def _fail() -> None:
    raise RuntimeError("the scheduler actor died")


def test_renewal_survives_errors_stray_cancellations_and_hung_calls(caplog):
    outcomes = [_fail, _stray_cancel, _hang, _fail, _stray_cancel]
    calls: list[str] = []

    async def renew() -> None:
        step = outcomes[len(calls)] if len(calls) < len(outcomes) else None
        calls.append(step.__name__ if step else "ok")
        if step is not None:
            await step()

    async def run() -> LeaseRenewal:
        lease = LeaseRenewal(renew, every_s=0.01, timeout_s=0.1)
        lease.ensure_running()
        for _ in range(500):
            await asyncio.sleep(0.01)
            if lease.renewed >= 3:
                break
        assert lease.running
        lease.ensure_running()  # running already: no second loop
        lease.stop()
        await asyncio.sleep(0.01)
        assert not lease.running
        return lease

    with caplog.at_level("WARNING"):
        lease = asyncio.run(run())
    assert calls[:6] == ["_fail", "_stray_cancel", "_hang", "_fail", "_stray_cancel", "ok"]
    assert lease.renewed >= 3
    failed = [r.getMessage() for r in caplog.records if "renewal failed" in r.getMessage()]
    assert failed == ["lease renewal failed (RuntimeError); retrying every 0.01 s"]
    assert any("renewed again after" in r.getMessage() for r in caplog.records)


def test_a_stopped_renewal_can_be_started_again():
    async def run() -> int:
        count = 0

        async def renew() -> None:
            nonlocal count
            count += 1

        lease = LeaseRenewal(renew, every_s=0.01)
        lease.ensure_running()
        await asyncio.sleep(0.05)
        lease.stop()
        await asyncio.sleep(0.01)
        stopped_at = count
        await asyncio.sleep(0.05)
        assert count == stopped_at  # stopped means stopped
        lease.ensure_running()
        await asyncio.sleep(0.05)
        return count - stopped_at

    assert asyncio.run(run()) >= 2


@pytest.mark.parametrize("every_s", [0.01])
def test_a_hung_call_does_not_hold_up_the_next_renewal(every_s):
    async def run() -> int:
        started = 0

        async def renew() -> None:
            nonlocal started
            started += 1
            await _hang()

        lease = LeaseRenewal(renew, every_s=every_s, timeout_s=0.05)
        lease.ensure_running()
        await asyncio.sleep(0.5)
        lease.stop()
        return started

    assert asyncio.run(run()) >= 4  # one call every timeout + period, none waited for forever
