"""A background thread per process that runs one step again and again.

gunicorn forks workers after the app may have been built (``--preload``), and
a thread does not survive a fork, so the thread is started lazily in the
process that serves: :meth:`BackgroundWorker.ensure_running` compares the
process id and starts a fresh thread when it changed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from mxisd_flask.errors import traceback_without_text

logger = logging.getLogger(__name__)


class BackgroundWorker:
    def __init__(self, name: str, step: Callable[[], None], interval_s: float) -> None:
        self._name = name
        self._step = step
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        """Start the thread in this process unless it already runs here."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._loop, name=self._name, daemon=True
            )
            self._thread.start()
            self._pid = os.getpid()
            logger.debug("background worker started name=%s", self._name)

    def wake(self) -> None:
        """Run the step now instead of at the end of the interval."""
        self._wake.set()

    def stop(self, timeout_s: float = 5) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout_s)
        self._pid = None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception as exc:
                # One failed pass (a database restart, a bug) must not end
                # every later delivery in this process; the next pass retries.
                # Not logger.exception: the exception's text may quote what
                # failed (a row's address); the traceback is enough here.
                logger.error(
                    "background step failed name=%s\n%s",
                    self._name,
                    traceback_without_text(exc),
                )
                logger.debug("background step failure text: %s", exc)
            self._wake.wait(self._interval_s)
            self._wake.clear()
