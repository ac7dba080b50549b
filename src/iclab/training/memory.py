"""An estimate of the memory a run needs, checked before any work against what the device has.

The estimate is deliberately simple and generous (an upper bound of the order of magnitude, not
a prediction): the prompts of the training, test and polishing batches; per layer, the token
representations and attention scores autograd keeps for the backward pass; the parameters with
their gradients and Adam moments; the per-prompt Jacobians of polishing. A run is refused when
the estimate exceeds the memory available, with the estimate and its largest term in the message,
so that ``task.d = 10**9`` or ``model.layers = 10**6`` fail at once instead of exhausting the
machine.
"""

from __future__ import annotations

import os

import torch

from iclab import registry
from iclab.config import ConfigError, RunConfig
from iclab.device import resolve_device
from iclab.models.ensemble import model_dimensions


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def estimate_bytes(config: RunConfig) -> dict[str, int]:
    """The estimate's terms in bytes: ``data``, ``activations``, ``parameters``, ``jacobians``."""
    task, model, train = config.task, config.model, config.train
    E = config.n_seeds
    item = 8 if config.dtype == "float64" else 4
    d = _int(getattr(task, "d", 1), 1)
    polish = train.polish.steps + train.polish.averaging_steps > 0
    batch = train.batch_size + train.test_size + (train.polish.batch_size if polish else 0)
    if hasattr(task, "T"):  # sequences: T tokens of 2d complex entries
        tokens, width, item = _int(task.T, 1), 2 * d, 2 * item
    else:
        tokens, width = _int(getattr(task, "n", 1), 1) + 1, d + 1
    layers, heads, hidden, mlp = model_dimensions(width - 1, model)
    data = 3 * E * batch * tokens * width * item
    model_class = registry.model_kind(model.kind).builder  # type: ignore[attr-defined]
    per_prompt = model_class.activation_bytes(d, model, tokens, item)
    per_member = model_class.state_bytes(d, model, item)
    params_per_member = layers * (heads * 2 * (hidden + 1) ** 2 + 2 * hidden * mlp) + width * hidden
    parameters = 4 * E * params_per_member * item  # values, gradients, two Adam moments
    jacobians = E * train.polish.batch_size * params_per_member * 8 if polish else 0
    return {
        "data": data,
        "activations": E * (batch * per_prompt + per_member),
        "parameters": parameters,
        "jacobians": jacobians,
    }


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (CUDA: free device memory; CPU: MemAvailable); None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(config: RunConfig) -> None:
    """Refuse (:class:`ConfigError`) a run whose estimate exceeds the device's free memory."""
    terms = estimate_bytes(config)
    need = sum(terms.values())
    have = available_bytes(resolve_device(config.device))
    if have is None or need <= have:
        return
    largest = max(terms, key=lambda k: terms[k])
    raise ConfigError(
        f"memory: this run needs about {_gib(need)} (largest term: {largest} {_gib(terms[largest])}"
        f") but {_gib(have)} is available; reduce train.batch_size, train.test_size, n_seeds, "
        "task.n / task.d or model.layers"
    )
