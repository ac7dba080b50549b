"""Deterministic seed derivation.

Every random draw in iclab comes from an explicit :class:`torch.Generator` whose seed is derived
from the run seed and a *purpose* (``"init"``, ``"train"``, ``"test"`` …) plus integer indices.
Because a seed is a pure function of these keys, a run can be resumed at any step without saving
generator states, and ensemble member ``e`` draws exactly what a single run with its seed draws.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*keys: int | str) -> int:
    """Hash any mix of ints and strings into a 63-bit seed (stable across runs and platforms)."""
    text = "\x1f".join(f"{type(k).__name__}:{k}" for k in keys)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(device: torch.device | str, *keys: int | str) -> torch.Generator:
    """A generator on ``device`` seeded by :func:`derive_seed` of ``keys``."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(derive_seed(*keys))
    return gen
