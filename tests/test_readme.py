"""The README's Python example runs as written (only its training length is shortened)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python example"
    code = "\n".join(blocks)
    assert "train.steps=300" in code
    code = code.replace("train.steps=300", "train.steps=20").replace(
        "progress=True", "progress=False"
    )
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)
    assert ns["batch"].x.shape == (3, 1000, 20, 5)
    result = ns["result"]
    assert result.info["status"] == "completed" and (tmp_path / "runs" / "one_layer").is_dir()
    assert ns["A"].shape == ns["A_star"].shape == (3, 5, 5)
    # Theorem 1's loss is a lower bound of every one-layer model, the trained one included
    test_loss = torch.tensor(result.metrics[-1]["test_loss"], dtype=torch.float64)
    assert (test_loss > 0.9 * ns["f_star"]).all()
    assert "relative error of A" in capsys.readouterr().out


def test_docs_getting_started_example_runs(tmp_path, monkeypatch):
    index = README.parent / "docs" / "index.md"
    blocks = re.findall(r"```python\n(.*?)```", index.read_text(), re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert "train.steps=300" in code
    code = code.replace("train.steps=300", "train.steps=10")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, str(index), "exec"), ns)
    result = ns["result"]
    assert result.info["status"] == "completed" and len(result.metrics[-1]["test_loss"]) == 2
    assert (tmp_path / "runs" / "one_layer" / "model.safetensors").is_file()
