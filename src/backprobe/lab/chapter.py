"""What every chapter of ``backprobe demo`` shares: the context it runs in and the result
it returns.

A chapter is a plain function ``DemoContext → ChapterResult``: it trains, prints, and
returns what it measured, one result per trained model, each with a ``key``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from rich.console import Console

__all__ = ["Chapter", "ChapterResult", "DemoContext", "KeyedResult"]


@dataclass(frozen=True)
class DemoContext:
    """What every chapter gets from ``run_demo``: the run database its runs go to, the
    quick (CI-sized) or full version, the seed, and where to print."""

    db: Path
    quick: bool
    seed: int
    console: Console


class KeyedResult(Protocol):
    """What a chapter measured on one model; ``key`` names it within the chapter."""

    @property
    def key(self) -> str: ...


ResultT = TypeVar("ResultT", bound=KeyedResult)


@dataclass
class ChapterResult(Generic[ResultT]):
    """What a chapter measured: one result per trained model, in training order
    (chapter 1: :class:`~backprobe.lab.demo.ModelResult`; chapter 2:
    :class:`~backprobe.lab.chapter_memory.MemoryResult`; chapter 3:
    :class:`~backprobe.lab.chapter_spikes.SpikeResult`)."""

    number: int
    title: str
    models: list[ResultT]

    def model(self, key: str) -> ResultT:
        """The result of the model with this ``key``."""
        return next(m for m in self.models if m.key == key)


@dataclass(frozen=True)
class Chapter:
    """A chapter of the demo: ``run`` trains, prints, and returns what it measured."""

    number: int
    title: str
    run: Callable[[DemoContext], ChapterResult[Any]]
