"""Admission: PARALLEL requests generate at once, up to QUEUE more wait in arrival order, the rest get a 503.

Runs on the event loop only (no locks). A request holds a Ticket from admission to its end; releasing it
gives the slot to the longest-waiting request, or takes a waiting request out of the queue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from .api_errors import overloaded, shutting_down

# Weight of the newest request in the running mean of request durations (for Retry-After).
_DURATION_WEIGHT = 0.2


class Ticket:
    def __init__(self, scheduler: "Scheduler", granted: asyncio.Future):
        self._scheduler = scheduler
        self.granted = granted  # resolves when the request may start (or fails with a 503 when the server stops)
        self._started_at: float | None = None
        self._released = False

    def start(self) -> None:
        self._started_at = time.monotonic()

    def release(self) -> None:
        """Give the slot back (or leave the queue); safe to call once in every outcome."""
        if self._released:
            return
        self._released = True
        self._scheduler._leave(self)


class Scheduler:
    def __init__(self, parallel: int, queue: int):
        self.parallel, self.queue_limit = parallel, queue
        self.running = 0
        self._waiting: deque[Ticket] = deque()
        self._mean_duration_s = 1.0
        self.closed = False

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def admit(self) -> Ticket:
        """A ticket whose `granted` resolves at once when a slot is free, or later from the queue; 503 if full."""
        if self.closed:
            raise shutting_down()
        loop = asyncio.get_running_loop()
        if self.running < self.parallel and not self._waiting:
            self.running += 1
            future = loop.create_future()
            future.set_result(None)
            return Ticket(self, future)
        if len(self._waiting) >= self.queue_limit:
            raise overloaded(self.retry_after_s())
        ticket = Ticket(self, loop.create_future())
        self._waiting.append(ticket)
        return ticket

    def retry_after_s(self) -> int:
        """Seconds until a queue place is likely free: the waiting requests' work spread over the slots."""
        estimate = self._mean_duration_s * (len(self._waiting) + 1) / self.parallel
        return max(1, min(60, math.ceil(estimate)))

    def close(self) -> None:
        """Stop admitting; waiting requests get a 503 now, running ones go on."""
        self.closed = True
        while self._waiting:
            ticket = self._waiting.popleft()
            if not ticket.granted.done():
                ticket.granted.set_exception(shutting_down())
                ticket.granted.exception()  # retrieved: a client that already left must not log "never retrieved"

    def _leave(self, ticket: Ticket) -> None:
        granted = ticket.granted
        if granted.done() and not granted.cancelled() and granted.exception() is None:
            if ticket._started_at is not None:
                duration = time.monotonic() - ticket._started_at
                self._mean_duration_s += _DURATION_WEIGHT * (duration - self._mean_duration_s)
            self._hand_over()
            return
        if ticket in self._waiting:  # it left the queue before its turn
            self._waiting.remove(ticket)
        if not granted.done():
            granted.cancel()

    def _hand_over(self) -> None:
        while self._waiting:
            ticket = self._waiting.popleft()
            if not ticket.granted.done():
                ticket.granted.set_result(None)  # the slot passes on: `running` stays the same
                return
        self.running -= 1
