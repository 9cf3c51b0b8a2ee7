"""The scheduler actor's ticket board (cluster.runtime.tickets): a caller gets the dispatch after
the one it names whether the round decides it before or after the call; an end answers a
waiting caller; a caller whose call is cancelled leaves the answer for its retry."""

from __future__ import annotations

import asyncio

from cluster.runtime.protocol import Ticket
from cluster.runtime.tickets import TicketBoard


def test_a_ticket_posted_before_the_call_is_returned_at_once_and_an_older_one_is_not():
    async def main():
        board = TicketBoard()
        board.post(Ticket("a", 1, "replica-0"))
        assert (await board.after("a", 0)).dispatch_no == 1
        waiting = asyncio.create_task(board.after("a", 1))  # wants dispatch 2
        await asyncio.sleep(0)
        assert not waiting.done()
        board.post(Ticket("a", 2, "replica-1"))
        assert (await waiting).replica_id == "replica-1"

    asyncio.run(main())


def test_an_end_answers_the_waiting_caller_and_a_withdrawn_ticket_is_not_given_again():
    async def main():
        board = TicketBoard()
        board.post(Ticket("a", 1, "replica-0"))
        board.withdraw("a")  # back to the queue
        waiting = asyncio.create_task(board.after("a", 0))
        await asyncio.sleep(0)
        assert not waiting.done()
        board.end(Ticket("a", 1, error="client gone"))
        assert (await waiting).error == "client gone"

    asyncio.run(main())


def test_a_cancelled_call_leaves_the_answer_for_the_retry():
    async def main():
        board = TicketBoard()
        first = asyncio.create_task(board.after("a", 0))
        retry = asyncio.create_task(board.after("a", 0))  # came in before the cancel
        await asyncio.sleep(0)
        first.cancel()  # Ray cancels a call whose caller timed out
        await asyncio.sleep(0)
        board.end(Ticket("a", 0, error="ended"))
        assert (await retry).error == "ended"

    asyncio.run(main())
