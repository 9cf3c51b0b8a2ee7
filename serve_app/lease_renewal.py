"""An ingress's lease at the scheduler: renewed every `every_s` for as long as the ingress lives.

The scheduler aborts an ingress's requests as "client gone" once their lease lapses, so the
renewal must outlive anything a single renewal can meet while the scheduler dies and restarts:
an error (the actor is gone or restarting), a call that hangs behind the restarting actor
(each is bounded by `timeout_s`, then the next one goes out), and a cancellation that is not
this loop's own (Ray can cancel the future of a call whose actor died). Only `stop()` ends it.
Failures are logged once per outage, with how long the outage lasted when it ends."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)


class LeaseRenewal:
    def __init__(
        self,
        renew: Callable[[], Awaitable[Any]],
        every_s: float = 1.0,
        timeout_s: float = 3.0,
    ) -> None:
        self._renew = renew
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.renewed = 0  # renewals that got through
        self._task: asyncio.Task | None = None
        self._stopped = False

    def ensure_running(self) -> None:
        """Start the loop (on the running event loop) unless it runs. In a context of its own:
        not the request's it was started from (its log lines are about no request)."""
        if self._task is None or self._task.done():
            self._stopped = False
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), context=contextvars.Context())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        failing_since: float | None = None
        while not self._stopped:
            failure = await self._once()
            now = time.monotonic()
            if failure is None:
                self.renewed += 1
                if failing_since is not None:
                    logger.warning("lease renewed again after %.1f s", now - failing_since)
                    failing_since = None
            elif failing_since is None:
                failing_since = now
                logger.warning(
                    "lease renewal failed (%s); retrying every %g s", failure, self.every_s
                )
            await asyncio.sleep(self.every_s)

    async def _once(self) -> str | None:
        """One renewal: None if it got through, else why not."""
        try:
            # asyncio.timeout, not wait_for: wait_for can swallow the task's own cancellation
            # when the call ends at the same moment (Python < 3.12).
            async with asyncio.timeout(self.timeout_s):
                await self._renew()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stopped or (task is not None and task.cancelling()):
                raise  # stop(): this loop's own cancellation
            return "its call was cancelled"
        except TimeoutError:
            return f"no answer in {self.timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure: the next renewal is the retry
            return type(exc).__name__
        return None
