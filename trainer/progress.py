"""Progress of long jobs: tqdm bars on a terminal, plain log lines (one per epoch or step group) otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


def bars_wanted(progress: bool = False, quiet: bool = False, stream: TextIO | None = None) -> bool:
    """Bars with ``--progress``, never with ``--quiet``, otherwise only when stderr is a terminal.

    A bar redraws itself with carriage returns: in a file or a pipe that is kilobytes of frames per
    second and nothing a person can read, so there the jobs log plain lines instead.
    """
    if quiet:
        return False
    if progress:
        return True
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def steps(
    iterable: Iterable[T], total: int, desc: str, unit: str, bars: bool, every_s: float = 30.0
) -> Iterator[T]:
    """Yields ``iterable``'s items under a tqdm bar, or logs a line at most every ``every_s`` seconds
    (and one when done) when ``bars`` is False."""
    if bars:
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit)
        return
    t0 = last = time.perf_counter()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every_s and done < total:
            _LOGGER.info("%s: %d/%d %s (%.0f s)", desc, done, total, unit, now - t0)
            last = now
    _LOGGER.info("%s: %d %s in %.1f s", desc, done, unit, time.perf_counter() - t0)


def _numbers(logs: dict | None) -> str:
    """``loss 0.2765, val_loss 0.2755, auc 0.5858, val_auc 0.6368``: losses first, each beside its val_."""
    keys = sorted(logs or {}, key=lambda k: ("loss" not in k, k.removeprefix("val_"), k.startswith("val_")))
    return ", ".join(f"{k} {float(logs[k]):.4f}" for k in keys)


def epoch_callback(desc: str, epochs: int, steps_per_epoch: int, bars: bool):
    """A Keras callback: a tqdm bar per epoch, or one log line per epoch with its losses and time.

    Keras itself must run with ``verbose=0``: its own bar is the carriage-return kind too.
    """
    import keras

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()
            self.bar = None
            if bars:
                from tqdm import tqdm

                self.bar = tqdm(total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="step")

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            if self.bar is not None:
                self.bar.set_postfix({k: f"{float(v):.4f}" for k, v in (logs or {}).items() if "loss" in k})
                self.bar.close()
                return
            _LOGGER.info(
                "%s epoch %d/%d: %s (%.1f s)",
                desc,
                epoch + 1,
                epochs,
                _numbers(logs),
                time.perf_counter() - self.t0,
            )

    return Epochs()
