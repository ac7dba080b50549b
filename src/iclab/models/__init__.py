"""Attention models with a leading ensemble dimension (one slice per seed)."""

from iclab.models.kernel_attention import KernelAttention, KernelAttentionConfig
from iclab.models.lsa import GramState, LinearSelfAttention, LSAConfig
from iclab.models.softmax_transformer import (
    SIZE_PRESETS,
    SoftmaxTransformer,
    SoftmaxTransformerConfig,
)

__all__ = [
    "SIZE_PRESETS",
    "GramState",
    "KernelAttention",
    "KernelAttentionConfig",
    "LSAConfig",
    "LinearSelfAttention",
    "SoftmaxTransformer",
    "SoftmaxTransformerConfig",
]
