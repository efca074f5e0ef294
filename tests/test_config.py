"""Config: YAML + --set overrides, validated, one-line errors naming the key."""
import pytest

from detrdistill.cli import embedded_config
from detrdistill.config import ConfigError, apply_overrides, load_config


def test_defaults_and_embedded_config_load():
    cfg = load_config()
    assert cfg.model.family == "deformable_detr"
    emb = load_config(embedded_config("synthetic"))
    assert emb.data.synthetic and emb.model.d_model == 64


def test_overrides_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  d_model: 128\n")
    cfg = load_config(p, ["model.num_queries=7", "optim.lr=0.001", "data.min_size=[64, 96]", "train.epochs=null",
                          "train.max_steps=3"])
    assert cfg.model.d_model == 128 and cfg.model.num_queries == 7
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.data.min_size == [64, 96]
    assert cfg.train.epochs is None and cfg.train.max_steps == 3


@pytest.mark.parametrize("override,needle", [
    (["model.famliy=detr"], "model.famliy: unknown key"),
    (["model.d_model=abc"], "model.d_model"),
    (["train.batch_size=0"], "train.batch_size"),
    (["optim.schedule=linear"], "optim.schedule"),
    (["nosection.x=1"], "nosection: unknown section"),
    (["model.d_model=30", "model.num_heads=8"], "divisible"),
])
def test_bad_values_give_one_line_error_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_yaml_no_is_not_false(tmp_path):
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  mixed_precision: no\n  progress: false\n")
    cfg = load_config(p, ["train.device=cpu"])
    assert cfg.train.mixed_precision == "no" and cfg.train.progress is False


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "list.yaml"
    wrong.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(wrong)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["model.d_model"])


def test_cli_reports_config_error_in_one_line(capsys):
    from detrdistill.cli import main
    rc = main(["train", "--set", "model.bogus=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "model.bogus" in err and len(err.splitlines()) == 1
