"""Each request's latest ticket, and the callers waiting for its next one.

A caller asks for "the dispatch after number N"; a round may decide it before the call comes
(the ticket waits here) or after (the call waits here). A request that ends answers its waiting
caller with its end."""

from __future__ import annotations

import asyncio

from cluster.runtime.protocol import Ticket


class TicketBoard:
    def __init__(self) -> None:
        self._latest: dict[str, Ticket] = {}
        self._waiting: dict[str, asyncio.Future[Ticket]] = {}

    def post(self, ticket: Ticket) -> None:
        """A new dispatch decided: it is the request's latest, and its waiter's answer."""
        self._latest[ticket.request_id] = ticket
        self._answer(ticket)

    def withdraw(self, request_id: str) -> None:
        """The latest ticket no longer stands (the request goes back to the queue)."""
        self._latest.pop(request_id, None)

    def end(self, ticket: Ticket) -> None:
        """The request ended: no more tickets; its waiter gets this one (its end)."""
        self._latest.pop(ticket.request_id, None)
        self._answer(ticket)

    async def after(self, request_id: str, dispatch_no: int) -> Ticket:
        """The request's ticket later than dispatch `dispatch_no`, once there is one."""
        ticket = self._latest.get(request_id)
        if ticket is not None and ticket.dispatch_no > dispatch_no:
            return ticket
        future = self._waiting.get(request_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._waiting[request_id] = future
        # Shielded: a caller that gives up (its call cancelled) must not cancel the answer
        # that the caller's retry will wait on.
        return await asyncio.shield(future)

    def _answer(self, ticket: Ticket) -> None:
        future = self._waiting.pop(ticket.request_id, None)
        if future is not None and not future.done():
            future.set_result(ticket)
