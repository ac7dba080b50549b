import pytest

from iclab.config import ConfigError, dump_config, load_config, make_config, preset_names


def test_every_preset_loads_and_round_trips(tmp_path):
    names = preset_names()
    assert names, "no presets shipped"
    for name in names:
        cfg = load_config(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        assert load_config(path) == cfg


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(
        "ahn2023_rotated_L3", ["train.lr=0.5", "model.layers=2", "task.covariance=identity"]
    )
    assert cfg.train.lr == 0.5 and cfg.model.layers == 2 and cfg.task.covariance == "identity"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": {"parametrization": "dense"}}, "model.parametrization"),
        ({"model": {"readout": "up"}}, "model.readout"),
        ({"train": {"optimizer": "lbfgs"}}, "train.optimizer"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"betas": [0.9, 1.5]}}, "betas"),
        ({"train": {"shampoo_exponent": 1.5}}, "train.shampoo_exponent"),
        ({"train": {"polish": {"steps": -1}}}, "train.polish.steps"),
        ({"train": {"polish": {"damping": float("inf")}}}, "train.polish.damping"),
        (
            {"train": {"polish": {"steps": 3, "tail_scales": [0.5, 1.0]}}},
            "train.polish.tail_scales",
        ),
        ({"train": {"polish": {"steps": 3, "tail_scales": [2.0]}}}, "train.polish.tail_scales"),
        (
            {
                "task": {"kind": "function_class"},
                "train": {"polish": {"steps": 3, "tail_scales": [1.0]}},
            },
            "train.polish.tail_scales",
        ),
        (
            {
                "model": {"kind": "kernel_attention"},
                "task": {"kind": "gaussian_process"},
                "train": {"polish": {"steps": 3}},
            },
            "train.polish.steps",
        ),
        ({"train": {"clip": {"mode": "sometimes"}}}, "train.clip.mode"),
        ({"train": {"schedule": {"kind": "linear"}}}, "train.schedule.kind"),
        ({"n_seeds": 0}, "n_seeds"),
        ({"dtype": "float16"}, "dtype"),
        ({"modle": {}}, "modle"),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        make_config(data)


def test_unknown_enum_lists_allowed_values():
    with pytest.raises(ConfigError, match="'full', 'pgd', 'sparse_pgd' or 'label_row'"):
        make_config({"model": {"parametrization": "dense"}})


def test_bad_override_and_unknown_preset():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("ahn2023_rotated_L3", ["train.lr"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset")
