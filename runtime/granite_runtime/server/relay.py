"""Token events from the engine thread to the event loop, one wake-up per batch.

The engine reports every token of every stream from its own thread. Waking the loop once
per event (`call_soon_threadsafe` writes a byte to the loop's self-pipe each time) cost
about half the engine thread's time at 64 streams; here events are appended under a lock
and the loop is woken only when no drain is already pending, so one step's events reach
their queues together.
"""

from __future__ import annotations

import asyncio
import threading


class EventRelay:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, object]] = []

    def put(self, queue: asyncio.Queue, event: object) -> None:
        """Called on the engine thread."""
        with self._lock:
            wake = not self._pending
            self._pending.append((queue, event))
        if wake:
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, event in pending:
            queue.put_nowait(event)


_RELAYS: dict[asyncio.AbstractEventLoop, EventRelay] = {}


def relay_for(loop: asyncio.AbstractEventLoop) -> EventRelay:
    """The relay of this event loop (one per loop; a server runs one)."""
    relay = _RELAYS.get(loop)
    if relay is None:
        relay = _RELAYS[loop] = EventRelay(loop)
    return relay
