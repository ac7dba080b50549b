"""Attention models with a leading ensemble dimension (one slice per seed)."""

from iclab.models.lsa import GramState, LinearSelfAttention, LSAConfig

__all__ = ["GramState", "LSAConfig", "LinearSelfAttention"]
