"""Hooks that measure gradient health on a user's model while it trains."""

from .probe import Probe
from .schedule import every_n, make_schedule
from .selection import ACTIVATION_TYPES, activation_family

__all__ = ["ACTIVATION_TYPES", "Probe", "activation_family", "every_n", "make_schedule"]
