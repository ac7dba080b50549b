"""Attention models with a leading ensemble dimension (one slice per seed)."""

from iclab.models.kernel_attention import KernelAttention, KernelAttentionConfig
from iclab.models.lsa import GramState, LinearSelfAttention, LSAConfig

__all__ = [
    "GramState",
    "KernelAttention",
    "KernelAttentionConfig",
    "LSAConfig",
    "LinearSelfAttention",
]
