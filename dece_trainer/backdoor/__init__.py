"""Backdoor harness: attacks, metrics, datasets and models to measure attacks and defenses."""

from .attacks import ATTACKS, IS_POISONED, Attack, get_attack

__all__ = ["ATTACKS", "IS_POISONED", "Attack", "get_attack"]
