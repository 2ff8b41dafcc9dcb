"""A request to stop, as Kubernetes makes it: SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import threading


class Stopping:
    """Two stages of stopping, set from a signal handler, read by the runner.

    `requested`: start no new unit. `abandon`: give up the unit in progress (its partial
    output is discarded and a rerun redoes it); set `grace_s` after the request, so that a
    unit close to its end still commits, yet the process exits before SIGKILL would come.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.abandon = threading.Event()

    def request(self, grace_s: float) -> None:
        if self.requested.is_set() or grace_s <= 0:
            self.abandon.set()
        self.requested.set()
        if not self.abandon.is_set():
            timer = threading.Timer(grace_s, self.abandon.set)
            timer.daemon = True
            timer.start()
