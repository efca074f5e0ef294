"""Config mistakes: reported before torch is imported, naming where the key came from and the key meant;
``detrdistill config show`` lists every key with its meaning, default and origin."""
import pytest
import yaml

from detrdistill.config import ConfigError, load_config
from tests.cli_process import cli_in_fresh_process as _cli_in_fresh_process


def test_a_misspelt_set_key_is_named_with_the_nearest_key_before_torch_is_imported():
    r = _cli_in_fresh_process("train", "--set", "train.max_step=5")
    lines = r["err"].strip().splitlines()
    assert r["rc"] == 2 and len(lines) == 1, r
    assert lines[0].startswith("error: --set train.max_step=5: train.max_step: unknown key")
    assert "did you mean train.max_steps?" in lines[0] and "config show" in lines[0]
    assert "synthetic.yaml" not in lines[0]  # the embedded config is not blamed for a --set mistake
    assert r["imported"] == [], r["imported"]


def test_an_unknown_family_is_one_line_with_the_nearest_family_before_transformers_is_imported():
    r = _cli_in_fresh_process("distill", "--set", "model.family=deformabel_detr", "--teacher", "t")
    assert r["rc"] == 2 and len(r["err"].strip().splitlines()) == 1, r
    assert "--set model.family=deformabel_detr: model.family: unknown model family" in r["err"]
    assert "did you mean 'deformable_detr'?" in r["err"]
    assert r["imported"] == [], r["imported"]


def test_a_bad_key_in_a_file_names_the_file_and_its_line(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("# my run\nmodel:\n  d_model: 64\n  num_querys: 30\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, ["train.seed=1"])
    assert str(e.value).startswith(f"{cfg}:4: model.num_querys: unknown key; did you mean model.num_queries?")
    bad_value = tmp_path / "value.yaml"
    bad_value.write_text("optim:\n  lr: 1e-3\n  warmup_steps: -3\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad_value)
    assert str(e.value).startswith(f"{bad_value}:3: optim.warmup_steps:")
    with pytest.raises(ConfigError) as e:  # the override that replaced the file's value is the one blamed
        load_config(bad_value, ["optim.warmup_steps=-4"])
    assert str(e.value).startswith("--set optim.warmup_steps=-4: optim.warmup_steps:")


def test_several_values_after_one_set_name_the_fix(capsys):
    """``--set a=1 b=2`` (one --set, two values): ``b=2`` lands in CONFIG, or beyond it is unrecognized; either way
    the error says to give each value its own --set, before torch is imported."""
    r = _cli_in_fresh_process("train", "--set", "train.max_steps=5", "train.seed=3")
    assert r["rc"] == 2 and r["imported"] == [], r
    assert "train.seed=3: config file not found" in r["err"] and "write --set train.seed=3" in r["err"], r["err"]
    from detrdistill.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", "--set", "train.max_steps=5", "train.seed=3", "optim.lr=3", "train.epochs=2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: optim.lr=3 train.epochs=2" in err, err
    assert "write --set optim.lr=3 --set train.epochs=2" in err, err


def test_a_missing_key_blames_what_started_its_section(tmp_path):
    """A split begun by ``--set`` blames that override, not the file that never named the split; a split the
    file declares blames the file's line."""
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.train.ann_file=a.json"])
    assert str(e.value).startswith("--set data.train.ann_file=a.json: data.train.image_dir: Field required"), e.value
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  synthetic: false\n  train:\n    ann_file: a.json\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, ["data.train.ann_file=b.json"])
    assert str(e.value).startswith(f"{cfg}:3: data.train.image_dir: Field required"), e.value


@pytest.mark.parametrize("override,meant", [
    ("train.lr=1e-3", "optim.lr"),          # the right key in another section
    ("trian.epochs=3", "train"),            # a misspelt section
    ("distill.feature.wieght=2", "distill.feature.weight"),
])
def test_the_nearest_key_is_suggested(override, meant):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"did you mean {meant}?" in str(e.value) and str(e.value).startswith(f"--set {override}:")


def test_invalid_yaml_names_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 64\n  min_size: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(e.value).startswith(f"{bad}:") and "not valid YAML" in str(e.value)
    assert str(e.value).split(":")[1].isdigit()


def test_the_family_is_checked_by_the_models_layer_not_by_the_config():
    from detrdistill.errors import UnsupportedFamilyError
    from detrdistill.models.family_index import check_family

    cfg = load_config(None, ["model.family=yolo"])  # the config layer knows no families
    with pytest.raises(UnsupportedFamilyError) as e:
        check_family(cfg.model.family)
    assert str(e.value).startswith("unknown model family 'yolo'; supported: ") and "deformable_detr" in str(e.value)
    assert check_family("detr") == "detr"


def test_the_light_family_list_is_the_registry():
    from detrdistill.models.families import family_names
    from detrdistill.models.family_index import DECLARED_FAMILIES
    assert sorted(DECLARED_FAMILIES) == sorted(family_names())


def test_config_show_prints_every_key_with_meaning_default_and_origin_and_loads_back(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  d_model: 64\n  num_heads: 4\ntrain:\n  epochs: 2\n")
    r = _cli_in_fresh_process("config", "show", str(cfg), "--set", "train.max_steps=7", "--output-dir", "runs/x")
    assert r["rc"] == 0 and r["imported"] == [], r
    text = r["out"]
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    assert load_config(shown) == load_config(cfg, ["train.max_steps=7", "train.output_dir=runs/x"])
    lines = {ln.split(":")[0].strip(): ln for ln in text.splitlines() if not ln.startswith("#")}
    assert "overrides epochs when set (default: null; --set train.max_steps=7)" in lines["max_steps"]
    assert f"(default: 256; {cfg}:2)" in lines["d_model"] and "transformer width" in lines["d_model"]
    assert "(default: runs/default; --output-dir runs/x)" in lines["output_dir"]
    assert "(default: 0.0002)" in lines["lr"] and "AdamW learning rate" in lines["lr"]
    # every leaf key has a meaning and a default
    leaves = [ln for ln in text.splitlines() if not ln.startswith("#") and not ln.rstrip().endswith(":")
              and not ln.split("#")[0].rstrip().endswith(":")]
    assert len(leaves) > 80
    for ln in leaves:
        comment = ln.split("  # ", 1)[1]
        assert "(default: " in comment and len(comment.split("(default: ")[0].strip()) > 3, ln


def test_config_show_of_a_config_with_data_splits_marks_their_required_keys_and_loads_back(tmp_path):
    """A split's ann_file / image_dir have no default: shown as required with the file line they came from."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  train: {ann_file: a/train.json, image_dir: a/images}\n  val: null\n")
    r = _cli_in_fresh_process("config", "show", str(cfg))
    assert r["rc"] == 0, r
    shown = tmp_path / "shown.yaml"
    shown.write_text(r["out"])
    assert load_config(shown) == load_config(cfg)
    lines = {ln.split(":")[0].strip(): ln for ln in r["out"].splitlines() if not ln.startswith("#")}
    assert "ann_file: a/train.json" in lines["ann_file"] and f"(required, no default; {cfg}:2)" in lines["ann_file"]
    assert "(required, no default" in lines["image_dir"] and "folder the json" in lines["image_dir"]


def test_config_show_reports_mistakes_like_the_other_commands():
    r = _cli_in_fresh_process("config", "show", "--set", "optim.lr=fast")
    assert r["rc"] == 2 and r["err"].startswith("error: --set optim.lr=fast: optim.lr:"), r


def test_config_show_output_is_plain_yaml_sections():
    r = _cli_in_fresh_process("config", "show")
    data = yaml.safe_load(r["out"])
    assert list(data) == ["data", "model", "loss", "optim", "train", "distill"]
    assert data["model"]["family"] == "deformable_detr"
