"""Progress, passed in: library code reports its steps to a :class:`Progress` the caller hands it, and
draws nothing by itself.

The ``ssai3d`` command passes :class:`TqdmProgress` (tqdm bars on stderr) unless ``-q`` is given; from
Python, ``progress=True`` asks for the same bars, and any :class:`Progress` subclass (a napari progress
widget, a log line every N steps) can be passed instead. The default, ``None``, is silent.
"""

from __future__ import annotations

from typing import Union


class Bar:
    """The progress of one loop (training steps, restored regions). This one reports nowhere."""

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""

    def postfix(self, **values) -> None:
        """Figures to show beside the bar (a loss, a rate)."""

    def close(self) -> None:
        """The loop is over (also when it stops early)."""


class Progress:
    """Makes a :class:`Bar` per loop. The base class draws nothing: the library's default."""

    def bar(self, desc: str, total: int, initial: int = 0, unit: str = "it") -> Bar:
        return Bar()


class _TqdmBar(Bar):
    def __init__(self, bar):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def postfix(self, **values) -> None:
        self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        self._bar.close()


class TqdmProgress(Progress):
    """tqdm bars on stderr (what the CLI passes in, and ``progress=True``)."""

    def bar(self, desc: str, total: int, initial: int = 0, unit: str = "it") -> Bar:
        from tqdm.auto import tqdm

        return _TqdmBar(tqdm(total=total, initial=initial, desc=desc, unit=unit, smoothing=0.05))


#: What the library's ``progress`` arguments take: a :class:`Progress`, True (tqdm bars) or None/False (silent).
ProgressLike = Union[Progress, bool, None]


def as_progress(progress: ProgressLike) -> Progress:
    """The :class:`Progress` a ``progress`` argument stands for."""
    if isinstance(progress, Progress):
        return progress
    return TqdmProgress() if progress is True else Progress()
