"""Progress of the long stages: a bar per stage on an interactive terminal, log lines elsewhere.

Bars are drawn only by a process that turned them on (``on_terminal``: the CLI, when its stderr is
a terminal) and only for work that runs in that process (Beam's in-process runner, the default).
Worker processes (multi-processing, Dask, Dataflow) never turn them on, and neither does a run
whose stderr is a file or a pipe (CI, Dataflow's logs): there the stages log their lines as before,
one per shard or per 1,000 samples scored. A stage calls ``advance`` and logs its line only when
``advance`` says no bar took the step.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import threading

# How a log line looks, in the CLI process and in local worker processes alike.
LOG_FORMAT, LOG_DATEFMT = "%(asctime)s %(name)s: %(message)s", "%H:%M:%S"

_lock = threading.Lock()
_stream = None  # where bars are drawn; None: bars are off in this process
_bars: dict = {}


@contextlib.contextmanager
def on_terminal(stream):
    """Bars on ``stream`` while inside, if it is a terminal (log lines then go through tqdm, so a
    line never tears a bar); every bar is closed on the way out."""
    global _stream
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    _stream = stream
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        close()
        _stream = None


def line_handler(stream) -> logging.Handler:
    """A handler writing log lines to ``stream`` as the CLI writes its own."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=LOG_DATEFMT))
    return handler


def active() -> bool:
    """Whether this process draws bars (else the stages log their lines)."""
    return _stream is not None


def advance(stage: str, n: int, unit: str = " samples", total: int | None = None, status: str | None = None) -> bool:
    """Move ``stage``'s bar on by ``n`` (made on first use, with ``unit`` and ``total``: count, rate
    and, given a total, the share done); ``status``: a short text after them. False when bars are
    off: the caller logs its line instead."""
    if _stream is None:
        return False
    from tqdm import tqdm

    with _lock:
        bar = _bars.get(stage)
        if bar is None:
            # the terminal's width, or 80 columns where it reports none (tqdm would draw nothing)
            bar = _bars[stage] = tqdm(desc=stage, unit=unit, total=total, file=_stream,
                                      ncols=shutil.get_terminal_size().columns, smoothing=0.1)
        if status:
            bar.set_postfix_str(status, refresh=False)
        bar.update(n)
    return True


def close() -> None:
    """Close every bar (each leaves its last line: the count and the mean rate); before the summary."""
    with _lock:
        for bar in _bars.values():
            bar.close()
        _bars.clear()
