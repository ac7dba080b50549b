"""Hostile input: every bad configuration fails before any work, with one line naming the field
(exit 2, no traceback, nothing written); runtime failures exit 1 with one line."""

import random
import re

import pytest

from iclab.cli import main
from iclab.config import ConfigError, load_config, make_config, preset_names
from iclab.training.memory import check_memory

BAD_VALUES = ["abc", "true", "yes", ".inf", "-.inf", ".nan", "-1", "0", "1e400", "1:30",
              "[1, 2]", "{a: 1}", "null", "1000000000000", "2.5", "'7'"]  # fmt: skip


def _leaves(data, prefix=""):
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path


def _cases():
    rng = random.Random(0)
    cases = []
    for preset in preset_names():
        keys = [k for k in _leaves(load_config(preset).to_dict()) if k not in ("name", "device")]
        for key in keys:
            for value in rng.sample(BAD_VALUES, 3):
                cases.append((preset, key, value))
    rng.shuffle(cases)
    return cases[:600]


def _refused(preset, key, value):
    """Whether iclab must refuse the override before any work (invalid, or cannot fit)."""
    try:
        check_memory(load_config(preset, [f"{key}={value}"]))
    except ConfigError:
        return True
    return False


def test_a_fuzz_of_hundreds_of_bad_configs_fails_cleanly(tmp_path, capsys):
    tried = refused = 0
    for preset, key, value in _cases():
        if not _refused(preset, key, value):
            continue  # a valid value for this field (e.g. 0 where 0 is allowed): not a bad input
        refused += 1
        out = tmp_path / f"run{refused}"
        code = main(["train", preset, "--out", str(out), "--quiet", "--set", f"{key}={value}"])
        err = capsys.readouterr().err
        tried += 1
        assert code == 2, (preset, key, value, err)
        assert err.startswith("iclab: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
        field = key.split(".")[-1]
        assert field in err or key in err or "memory:" in err, (key, value, err)
        assert len(err) < 600, err
        assert not out.exists(), f"{key}={value} wrote {out}"
    assert tried >= 300, tried


@pytest.mark.parametrize(
    ("override", "field", "why"),
    [
        ("seed=yes", "seed", "valid integer"),
        ("train.steps=yes", "train.steps", "valid integer"),
        ("train.steps=1:30", "train.steps", "valid integer"),
        ("train.steps=true", "train.steps", "valid integer"),
        ("train.steps=2.0", "train.steps", "valid integer"),
        ("train.lr=.inf", "train.lr", "finite"),
        ("train.eps=.inf", "train.eps", "finite"),
        ("train.weight_decay=.inf", "train.weight_decay", "finite"),
        ("model.init_std=.nan", "model.init_std", "finite"),
        ("task.d=1000000000", "memory", "available"),
        ("model.layers=1000000", "memory", "available"),
    ],
)
def test_yaml_surprises_and_sizes_are_refused(override, field, why, capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "ahn2023_rotated_L3", "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    assert field in err and why in err and not out.exists()


def test_yaml_1_2_numbers():
    assert make_config(load_config("ahn2023_rotated_L3", ["seed=010"]).to_dict()).seed == 10
    assert load_config("ahn2023_rotated_L3", ["seed=0o10"]).seed == 8


def test_duplicate_keys_and_aliases_are_refused_at_once(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 1\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' \(lines 3 and 4\)"):
        load_config(dup)
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="anchors and aliases") as err:
        load_config(bomb)
    assert len(str(err.value)) < 200


def test_an_error_never_echoes_more_than_an_excerpt(tmp_path, capsys):
    huge = "[" + ", ".join(["1"] * 20000) + "]"
    assert main(["show", "ahn2023_rotated_L3", "--set", f"train.steps={huge}"]) == 2
    err = capsys.readouterr().err
    assert "train.steps" in err and len(err) < 400


def test_runtime_failures_exit_1_with_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    args = ["train", "ahn2023_one_layer_identity", "--out", str(tmp_path / "r"), "--quiet"]
    args += ["--set", "train.optimizer=sgd", "--set", "train.lr=1000000.0"]
    args += [
        "--set",
        "train.steps=50",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.test_size=64",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("iclab: error: training diverged") and err.count("\n") == 1
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "config.yaml").write_text((tmp_path / "r" / "config.yaml").read_text())
    (tmp_path / "r2" / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    args[3] = str(tmp_path / "r2")
    assert main(args) == 1
    assert "not a readable iclab tensor file" in capsys.readouterr().err
    from iclab.training.checkpoint import RunFolderError

    with pytest.raises(RunFolderError):
        main(["--debug", *args])


def test_every_preset_is_valid_and_fits():
    for preset in preset_names():
        check_memory(load_config(preset))
        assert re.fullmatch(r"[A-Za-z0-9_]+", preset)


def test_reproduce_refuses_an_empty_path_and_a_users_own_folder(tmp_path, capsys):
    assert main(["reproduce", "ahn2023", "--quick", "--out", ""]) == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["reproduce", "ahn2023", "--quick", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "empty path" in err and "not an iclab reproduction" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_deep_nesting_is_a_config_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)
