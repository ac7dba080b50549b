"""Typed, validated run configuration and YAML presets.

A :class:`RunConfig` is everything a run needs: task, model, training recipe, seeds, device.
Invalid values fail at construction, before any work starts, with the field path and the allowed
values (pydantic's messages, reformatted by :func:`format_validation_error`).
"""

from __future__ import annotations

import importlib.resources
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from iclab import registry, strict_yaml
from iclab.models import LSAConfig  # importing the packages registers the built-in kinds
from iclab.tasks import LinearRegressionConfig
from iclab.validation import STRICT_CONFIG

DEFAULT_KIND = {"task": "linear_regression", "model": "lsa"}


def _registered_config(field: str, value: Any) -> BaseModel:
    """Validate ``value`` (a mapping or a config object) as the config of its registered kind."""
    table = registry.TASKS if field == "task" else registry.MODELS
    if isinstance(value, BaseModel):
        entry = table.get(getattr(value, "kind", None))  # type: ignore[arg-type]
        if entry is not None and isinstance(value, entry.config):
            return value
        value = value.model_dump()
    if not isinstance(value, dict):
        raise PydanticCustomError("mapping_type", "must be a mapping with a 'kind' key")
    kind = value.get("kind", DEFAULT_KIND[field])
    if not isinstance(kind, str) or kind not in table:
        raise ValidationError.from_exception_data(
            field,
            [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "unknown_kind",
                        "unknown kind '{kind}'; allowed: {allowed}",
                        {"kind": kind, "allowed": ", ".join(sorted(table))},
                    ),
                    loc=("kind",),
                    input=kind,
                )
            ],
        )
    return table[kind].config.model_validate(value)


class ConfigError(ValueError):
    """An invalid configuration; the message names each offending field."""


class ClipConfig(BaseModel):
    model_config = STRICT_CONFIG

    mode: Literal["none", "global", "per_matrix"] = Field(
        "none",
        description="gradient clipping per ensemble member: 'none', 'global' (all parameters "
        "together) or 'per_matrix' (each layer/head matrix separately)",
    )
    max_norm: float = Field(1.0, gt=0.0, description="clipping threshold")


class ScheduleConfig(BaseModel):
    model_config = STRICT_CONFIG

    kind: Literal["constant", "step", "cosine"] = Field(
        "constant", description="learning-rate schedule"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    step_every: int = Field(
        4000, ge=1, description="'step': multiply the lr by gamma every k steps"
    )
    gamma: float = Field(0.5, gt=0.0, le=1.0, description="'step': decay factor")
    min_factor: float = Field(0.0, ge=0.0, le=1.0, description="'cosine': final lr / initial lr")


MAX_TAIL_SCALES = 8


class PolishConfig(BaseModel):
    """Levenberg–Marquardt iterations after the first-order steps (small models only)."""

    model_config = STRICT_CONFIG

    steps: int = Field(
        0,
        ge=0,
        description="Levenberg–Marquardt iterations after train.steps on one fixed batch (0: "
        "none); each solves the damped Gauss–Newton system of the squared query error, so it "
        "converges where first-order steps crawl along ill-conditioned directions",
    )
    batch_size: int = Field(
        20000,
        ge=1,
        description="prompts per seed in the fixed polishing batch (and in each averaging batch)",
    )
    averaging_steps: int = Field(
        0,
        ge=0,
        description="then Gauss–Newton steps on fresh batches with step sizes 1/2, 1/3, …: the "
        "iterate averages the batches' optima, so its sampling error keeps falling",
    )
    damping: float = Field(
        1e-3,
        gt=0.0,
        allow_inf_nan=False,
        description="initial damping λ, relative to the mean diagonal of the Gauss–Newton "
        "matrix (divided by 3 after an accepted step, multiplied by 10 after a rejected one)",
    )
    tail_scales: list[float] | None = Field(
        None,
        description="scales s_k of the defensive importance-sampling mixture for the polishing "
        "batches: each prompt's context covariates are drawn as s_k·x with k uniform over the "
        "list, and its squared error is weighted by p(x)/q(x), so the batch holds far more "
        "prompts with a large sample covariance and its weighted loss stays unbiased; finite "
        f"values >= 1, 1.0 among them, at most {MAX_TAIL_SCALES}; null: plain batches "
        "(task.kind linear_regression only)",
    )

    @field_validator("tail_scales")
    @classmethod
    def _check_tail_scales(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        allowed = f"allowed: 1 to {MAX_TAIL_SCALES} finite scales >= 1, 1.0 among them, or null"
        if not all(math.isfinite(s) and s >= 1.0 for s in v):
            raise ValueError(f"every scale must be finite and >= 1 ({allowed})")
        if 1.0 not in v:
            raise ValueError(
                f"must contain 1.0, the defensive component that bounds every weight ({allowed})"
            )
        if len(v) > MAX_TAIL_SCALES:
            raise ValueError(f"{len(v)} scales are too many ({allowed})")
        return v


class RampConfig(BaseModel):
    """A value growing linearly in steps: ``min(end, start + inc · ⌊step / interval⌋)``, where
    ``end`` is the task's own value (its ``n``, its dimension)."""

    model_config = STRICT_CONFIG

    start: int = Field(ge=1, description="value at step 0")
    inc: int = Field(1, ge=0, description="added every `interval` steps")
    interval: int = Field(1000, ge=1, description="steps between increments")

    def at(self, step: int, end: int) -> int:
        return min(end, self.start + self.inc * (step // self.interval))


class CurriculumConfig(BaseModel):
    """Training prompts that start short and low-dimensional and grow to the task's ``n`` and
    dimension (the test set always uses the task's own values)."""

    model_config = STRICT_CONFIG

    n: RampConfig | None = Field(None, description="context examples per training prompt")
    active_dims: RampConfig | None = Field(
        None, description="non-zero input coordinates of the training prompts"
    )

    def at(self, step: int, ends: dict[str, int]) -> dict[str, int]:
        """The task overrides of the batch drawn at ``step``."""
        ramps = {"n": self.n, "active_dims": self.active_dims}
        return {k: r.at(step, ends[k]) for k, r in ramps.items() if r is not None}


class TrainConfig(BaseModel):
    model_config = STRICT_CONFIG

    optimizer: Literal["adam", "adamw", "sgd", "shampoo"] = Field(
        "adam",
        description="optimizer: adam, adamw, sgd, or shampoo (two-sided matrix preconditioning "
        "with Adam-grafted step sizes; fastest on rotated covariances)",
    )
    lr: float = Field(1e-3, gt=0.0, description="initial learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW betas")
    eps: float = Field(1e-8, gt=0.0, description="Adam/AdamW epsilon")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay (AdamW: decoupled)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum")
    shampoo_exponent: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="Shampoo: the inverse root p of each side's statistics, L^-p G R^-p (1/4 is "
        "the original method; 1/2 and 1 undo a two-sided congruence or similarity of the "
        "weights when the error is isotropic)",
    )
    steps: int = Field(
        1000, ge=0, description="optimizer steps (0 evaluates and saves the initialization)"
    )
    batch_size: int = Field(1000, ge=1, description="training prompts per step and seed")
    resample_every: int = Field(1, ge=1, description="draw a fresh training batch every k steps")
    clip: ClipConfig = ClipConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    polish: PolishConfig = PolishConfig()
    curriculum: CurriculumConfig | None = Field(
        None,
        description="grow the training prompts' n and active_dims linearly (tasks that accept "
        "them, e.g. function_class); null: the task's own values throughout",
    )
    init_from: str | None = Field(
        None,
        description="a completed run folder whose final weights start this run (a path "
        "relative to this run folder's parent, e.g. a sibling's name, or absolute): same "
        "task, seeds and model settings, except that a model may grow where its kind allows "
        "(LSA: more layers, the extra ones starting at zero, i.e. as identity maps); null: the "
        "random initialization",
    )
    test_size: int = Field(5000, ge=1, description="prompts in the fixed test set (per seed)")
    eval_every: int = Field(100, ge=1, description="evaluate on the test set every k steps")
    checkpoint_every: int = Field(1000, ge=1, description="write a checkpoint every k steps")
    compile: bool = Field(False, description="torch.compile the forward (fast for long runs)")
    tensorboard: bool = Field(False, description="also write TensorBoard scalars (optional)")

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_from_list(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v  # YAML has lists, not tuples

    @field_validator("init_from")
    @classmethod
    def _check_init_from(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\0" in v):
            raise ValueError("must name a run folder (a non-empty path) or be null")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        for i, b in enumerate(self.betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
        return self


class RunConfig(BaseModel):
    """One training run of an ensemble of seeds."""

    model_config = STRICT_CONFIG

    name: str = Field("run", description="a label for the run")
    seed: int = Field(0, ge=0, description="base seed; member e uses seed + e")
    n_seeds: int = Field(1, ge=1, description="ensemble size: seeds trained in one tensor program")
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1' …")
    dtype: Literal["float32", "float64"] = Field("float32", description="working precision")
    precision: Literal["float32", "tf32", "bf16"] = Field(
        "float32",
        description="matmul precision of float32 training: float32 (TF32 off, the default), tf32 "
        "(TF32 matmuls on CUDA; no effect on CPU) or bf16 (bfloat16 autocast of the training "
        "forward, for models that allow it: the softmax transformer); evaluation stays float32",
    )
    task: SerializeAsAny[BaseModel] = Field(
        default_factory=LinearRegressionConfig,
        description="the ICL task; 'kind' picks a registered task kind (default "
        "linear_regression; `iclab kinds` lists them)",
    )
    model: SerializeAsAny[BaseModel] = Field(
        default_factory=LSAConfig,
        description="the model; 'kind' picks a registered model kind (default lsa; `iclab kinds` "
        "lists them and the tasks each reads)",
    )
    train: TrainConfig = TrainConfig()

    @field_validator("task", "model", mode="wrap")
    @classmethod
    def _registered(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> BaseModel:
        return _registered_config(str(info.field_name), value)

    @model_validator(mode="after")
    def _check_pair(self) -> RunConfig:
        registry.check_pair(self.task.kind, self.model.kind)  # type: ignore[attr-defined]
        polish = self.train.polish
        model = registry.model_kind(self.model.kind)  # type: ignore[attr-defined]
        if self.train.curriculum is not None:
            _check_curriculum(self.train.curriculum, self.task)
        check_task = getattr(model.builder, "check_task", None)
        if callable(check_task):
            check_task(self.model, self.task)
        if self.precision != "float32" and self.dtype != "float32":
            raise ValueError(
                f"precision: {self.precision!r} lowers float32 arithmetic, but dtype is "
                f"{self.dtype!r}; use precision=float32 with dtype={self.dtype}"
            )
        if self.precision == "bf16" and not model.trains_in_bf16:
            bf16 = [m.name for m in registry.MODELS.values() if m.trains_in_bf16]
            raise ValueError(
                f"precision: 'bf16' is not allowed for model.kind {self.model.kind!r}, whose "  # type: ignore[attr-defined]
                f"results are compared with float64 theory (allowed for: {bf16}; use float32 "
                "or tf32)"
            )
        if polish.steps + polish.averaging_steps > 0 and not model.has_prediction_jacobian:
            jacobian = [m.name for m in registry.MODELS.values() if m.has_prediction_jacobian]
            field = "steps" if polish.steps > 0 else "averaging_steps"  # the field that asks
            raise ValueError(
                f"train.polish.{field}: Levenberg–Marquardt polishing needs per-prompt Jacobians, "
                f"which model.kind {self.model.kind!r} does not provide (models that do: "  # type: ignore[attr-defined]
                f"{jacobian}; set train.polish.{field}=0)"
            )
        if polish.tail_scales is not None:
            _check_tail_scales(polish, self.task)
        return self

    @property
    def seeds(self) -> list[int]:
        return [self.seed + e for e in range(self.n_seeds)]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# pydantic names the branch of a union it tried (``literal['a','b']``, ``list[list[float]]``,
# ``function-after[...]``) in an error's location: noise for the user
_UNION_BRANCH = re.compile(
    r"^(?:literal|list|tuple|dict|set|function-\w+|union|nullable)\[|^(?:int|float|str|bool|none)$"
)


def curriculum_ends(task: BaseModel) -> dict[str, int]:
    """The values a curriculum grows to: the task's ``n`` and its active dimensions."""
    ends = {}
    if isinstance(getattr(task, "n", None), int):
        ends["n"] = task.n  # type: ignore[attr-defined]
    dims = getattr(task, "effective_dims", None)
    if isinstance(dims, int):
        ends["active_dims"] = dims
    return ends


def _check_curriculum(curriculum: CurriculumConfig, task: BaseModel) -> None:
    kind = registry.task_kind(task.kind)  # type: ignore[attr-defined]
    accepts = getattr(kind.builder, "curriculum_keys", ())
    ends = curriculum_ends(task)
    for key in ("n", "active_dims"):
        ramp = getattr(curriculum, key)
        if ramp is None:
            continue
        if key not in accepts:
            able = sorted(
                t.name
                for t in registry.TASKS.values()
                if key in getattr(t.builder, "curriculum_keys", ())
            )
            raise ValueError(
                f"train.curriculum.{key}: task.kind {task.kind!r} cannot vary {key} per batch "  # type: ignore[attr-defined]
                f"(task kinds that can: {able})"
            )
        if ramp.start > ends[key]:
            raise ValueError(
                f"train.curriculum.{key}.start: {ramp.start} exceeds the task's {key} = {ends[key]}"
            )


def _check_tail_scales(polish: PolishConfig, task: BaseModel) -> None:
    """Importance-sampled polishing batches need polishing and a task that can tilt its draws."""
    able = sorted(t.name for t in registry.TASKS.values() if hasattr(t.builder, "sample_tilted"))
    if not hasattr(registry.task_kind(task.kind).builder, "sample_tilted"):  # type: ignore[attr-defined]
        raise ValueError(
            f"train.polish.tail_scales: task.kind {task.kind!r} cannot draw importance-sampled "  # type: ignore[attr-defined]
            f"polishing batches (task kinds that can: {able}; set train.polish.tail_scales=null)"
        )
    if polish.steps + polish.averaging_steps == 0:
        raise ValueError(
            "train.polish.tail_scales: weights the polishing batches, but there is no polishing "
            "(train.polish.steps = averaging_steps = 0); set one of them > 0 or "
            "train.polish.tail_scales=null"
        )


def _excerpt(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error never echoes a whole input back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"] if not _UNION_BRANCH.match(str(p))) or "<config>"
        if e["type"] == "unknown_kind":
            lines.append(f"{where}: {e['msg']}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a check across fields: its message names the fields itself
            lines.append(msg)
            continue
        lines.append(
            f"{where}: {msg} (got {_excerpt(e['input'])})" if "input" in e else f"{where}: {msg}"
        )
    return "invalid configuration: " + "; ".join(lines)


def make_config(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig`, raising :class:`ConfigError`."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def preset_names() -> list[str]:
    root = importlib.resources.files("iclab") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def load_preset_dict(name: str) -> dict[str, Any]:
    path = importlib.resources.files("iclab") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"preset: unknown preset {name!r}; available: {', '.join(preset_names())}"
        )
    return strict_yaml.load(path.read_text(), where=f"preset {name}") or {}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict (copied)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override: expected KEY=VALUE (e.g. train.lr=0.01), got {item!r}")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override: {key!r} goes through a non-mapping field")
        node[parts[-1]] = _parse_value(key, raw)
    return out


def _parse_value(key: str, raw: str) -> Any:
    try:
        return strict_yaml.load(raw, where=f"override {key}")
    except strict_yaml.YAMLError as err:
        raise ConfigError(str(err)) from None


def load_config(source: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A config from a preset name or a YAML file, with optional ``KEY=VALUE`` overrides."""
    path = Path(source)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"config: file {str(path)!r} does not exist")
        try:
            data = strict_yaml.load(path.read_text(), where=f"config {path}") or {}
        except strict_yaml.YAMLError as err:
            raise ConfigError(str(err)) from None
    else:
        data = load_preset_dict(str(source))
    if not isinstance(data, dict):
        raise ConfigError(f"config: {source!s} must hold a mapping at the top level")
    return make_config(apply_overrides(data, overrides or []))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
