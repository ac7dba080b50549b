"""iclab: a laboratory for the theory of in-context learning in transformers.

The entry points most scripts need are importable from the top level (lazily, so ``import
iclab`` stays cheap): :func:`make_config`, :func:`load_config`, :func:`train`, :func:`load_run`,
:func:`register_task` and :func:`register_model`.
"""

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "make_config": "iclab.config",
    "load_config": "iclab.config",
    "RunConfig": "iclab.config",
    "train": "iclab.training.trainer",
    "load_run": "iclab.training.trainer",
    "register_task": "iclab.registry",
    "register_model": "iclab.registry",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'iclab' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
