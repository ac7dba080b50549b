"""Imports point down the floors and never back up (nor sideways between tasks and models)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "iclab"

# lowest floor first; a module may import its own floor's package and any floor below it
FLOORS = [
    {
        "seeding",
        "device",
        "validation",
        "matrix_functions",
        "atomic_io",
        "batches",
        "registry",
        "kernels",
        "prompt_shapes",
        "strict_yaml",
    },
    {"tasks", "models"},  # siblings: neither imports the other
    {"theory"},
    {"algorithms"},
    {"config"},
    {"training"},
    {"analysis"},
    {"experiments"},
    {"cli"},
]
GROUND = 0


def _floor(component: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if component in floor)


def _component(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions count
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            inside = parts[0] == "iclab" and len(parts) > 1
            if inside and ((SRC / parts[1]).is_dir() or (SRC / f"{parts[1]}.py").is_file()):
                out.add(parts[1])
    return out


def test_every_module_is_on_a_floor():
    components = {_component(p) for p in SRC.rglob("*.py")} - {"__init__"}
    known = set().union(*FLOORS)
    assert components <= known, (
        f"put these on a floor in tests/test_layers.py: {components - known}"
    )


def test_imports_never_run_up_a_floor_or_across_siblings():
    bad = []
    for path in SRC.rglob("*.py"):
        me = _component(path)
        if me == "__init__":
            continue
        for other in _imports(path) - {me}:
            if _floor(other) > _floor(me) or (_floor(other) == _floor(me) != GROUND):
                bad.append(f"{path.relative_to(SRC)} imports iclab.{other}")
    assert not bad, "imports up a floor:\n" + "\n".join(sorted(bad))


def test_the_check_sees_lazy_and_dotted_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from iclab.training import train\n    import iclab.models.lsa\n"
        "from iclab import registry\n"
    )
    assert _imports(probe) == {"training", "models", "registry"}
    assert _floor("training") > _floor("theory") and _floor("tasks") == _floor("models")
