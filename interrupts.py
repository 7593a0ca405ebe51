"""Ctrl-C held back across a step that must not be cut in half (a checkpoint's write, a process's
start): it takes effect, as KeyboardInterrupt, once the step ends."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ctrl_c_after() -> Iterator[None]:
    """Run the block with SIGINT recorded, not raised; raise KeyboardInterrupt after it if one
    came. Only the main thread handles signals, so elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
