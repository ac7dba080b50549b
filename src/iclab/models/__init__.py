"""Ensemble models (a leading seed dimension) behind one contract, :class:`EnsembleModel`."""

from iclab.models.causal_linear_attention import (
    CausalLinearAttention,
    CausalLinearAttentionConfig,
)
from iclab.models.ensemble import EnsembleModel, TokenRowModel, mse_per_member
from iclab.models.kernel_attention import KernelAttention, KernelAttentionConfig
from iclab.models.lsa import GramState, LinearSelfAttention, LSAConfig
from iclab.models.softmax_transformer import (
    SIZE_PRESETS,
    SoftmaxTransformer,
    SoftmaxTransformerConfig,
)
from iclab.registry import import_all_modules

__all__ = [
    "SIZE_PRESETS",
    "CausalLinearAttention",
    "CausalLinearAttentionConfig",
    "EnsembleModel",
    "GramState",
    "KernelAttention",
    "KernelAttentionConfig",
    "LSAConfig",
    "LinearSelfAttention",
    "SoftmaxTransformer",
    "SoftmaxTransformerConfig",
    "TokenRowModel",
    "mse_per_member",
]


# import every module of the package, so that each one's @register_model runs: adding a kind is
# adding its module
import_all_modules(__name__, __path__)
