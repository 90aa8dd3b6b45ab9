"""Graceful stop on SIGINT/SIGTERM: the first signal asks the run to stop after the current step (finished
work is kept and recorded); a second SIGINT aborts at once."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def __call__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def graceful_stop(quiet: bool = False) -> Iterator[StopRequest]:
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signum = signum
        if not quiet:
            print(
                f"\n{signal.Signals(signum).name}: stopping after the current step, keeping finished work "
                "(Ctrl-C again aborts)",
                file=sys.stderr,
            )

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
