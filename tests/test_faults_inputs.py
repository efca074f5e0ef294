"""Fault suite, hostile or broken inputs (docs/reliability.md "Model folders", "Config"): code shipped in a model
folder never runs; model folders whose weights cannot load, bad --set values, binary configs and decompression
bombs are one line naming the file or key."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from detrdistill.cli import main
from tests.test_faults import _one_line_error, _run
from tests.test_faults import teacher_dir  # noqa: F401  (module fixture: a tiny teacher)

pytestmark = pytest.mark.usefixtures("one_thread")

EVIL = '''from pathlib import Path
Path(__file__).with_name("CODE_RAN").write_text("the model folder's code ran")
from transformers import DeformableDetrImageProcessor, DeformableDetrConfig, DeformableDetrForObjectDetection
class EvilProcessor(DeformableDetrImageProcessor):
    pass
class EvilConfig(DeformableDetrConfig):
    pass
class EvilModel(DeformableDetrForObjectDetection):
    pass
'''


@pytest.fixture
def code_folder(teacher_dir, tmp_path):  # noqa: F811
    """A model folder whose config and processor point transformers at a .py file in the folder (auto_map);
    importing that file writes CODE_RAN."""
    d = tmp_path / "evil"
    shutil.copytree(teacher_dir, d)
    (d / "evil_code.py").write_text(EVIL)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", "AutoModelForObjectDetection": "evil_code.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    proc = json.loads((d / "preprocessor_config.json").read_text())
    proc.update(auto_map={"AutoImageProcessor": "evil_code.EvilProcessor"}, image_processor_type="EvilProcessor")
    (d / "preprocessor_config.json").write_text(json.dumps(proc))
    return d


@pytest.mark.slow  # distils and evaluates through the CLI
def test_code_in_a_model_folder_never_runs(code_folder, synth_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *a, **k: "y")  # a user who would answer yes to any prompt
    image = next((synth_dir / "images").glob("*.png"))
    assert main(["predict", str(code_folder), str(image), "--out", str(tmp_path / "p")]) == 2
    line = _one_line_error(capsys)
    assert str(code_folder / "preprocessor_config.json") in line and "custom code" in line
    # every other loader reads the folder with the family's own classes: it works, and the code never runs
    assert _run("eval", tmp_path / "e", synth_dir, flags=["--model", str(code_folder)]) == 0
    assert _run("distill", tmp_path / "d", synth_dir, flags=["--teacher", str(code_folder)]) == 0
    assert _run("train", tmp_path / "t", synth_dir, "model.d_model=64", "model.decoder_layers=3",
                "model.num_queries=15", f"model.pretrained={code_folder}") == 0
    assert main(["export", str(code_folder), "--out", str(tmp_path / "m.onnx"), "--height", "64", "--width", "64",
                 "--no-check"]) == 0
    assert not (code_folder / "CODE_RAN").exists()


def test_every_load_passes_trust_remote_code_false():
    """grep: every from_pretrained / AutoImageProcessor / AutoConfig load in the package says trust_remote_code=False."""
    root = Path(__file__).resolve().parents[1] / "detrdistill"
    calls = []
    for f in root.rglob("*.py"):
        lines = f.read_text().splitlines()
        for i, ln in enumerate(lines):
            code = ln.split("#")[0]
            if ".from_pretrained(" in code and not code.strip().startswith(('"', "'", "``")) and "def " not in code:
                calls.append((f.name, i + 1, " ".join(lines[i:i + 2])))
    assert len(calls) >= 3, calls  # the detector, the backbone, the image processor
    assert all("trust_remote_code=False" in c[2] for c in calls), [c for c in calls if "trust_remote" not in c[2]]


def _mismatched(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["d_model"] = cfg["d_model"] * 2  # the weights no longer fit the config
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _pickled_bin(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (open, (str(dst / "CODE_RAN"), "w"))
    torch.save({"weights": Payload()}, dst / "pytorch_model.bin")
    return dst


@pytest.mark.slow  # a CLI-trained teacher
@pytest.mark.parametrize("how", ["mismatched_config", "pickled_bin"])
def test_a_model_folder_that_cannot_load_is_one_line(how, teacher_dir, synth_dir, tmp_path, capsys):  # noqa: F811
    bad = (_mismatched if how == "mismatched_config" else _pickled_bin)(teacher_dir, tmp_path / "bad")
    expect = "do not fit its config.json" if how == "mismatched_config" else "pickled objects"
    image = next((synth_dir / "images").glob("*.png"))
    runs = [lambda: main(["predict", str(bad), str(image), "--out", str(tmp_path / "p")]),
            lambda: _run("eval", tmp_path / "e", synth_dir, flags=["--model", str(bad)]),
            lambda: _run("distill", tmp_path / "d", synth_dir, flags=["--teacher", str(bad)])]
    for run in runs:
        assert run() == 2
        line = _one_line_error(capsys)
        assert str(bad) in line and expect in line, line
    assert not (bad / "CODE_RAN").exists() and not (tmp_path / "d" / "run.json").exists()


def test_eval_of_a_missing_model_writes_nothing(synth_dir, tmp_path, capsys):
    """The model is checked before the eval folder is claimed: a run that was never trained leaves no empty folder
    behind, and the error names the missing directory."""
    out = tmp_path / "runs" / "student"
    assert _run("eval", out, synth_dir) == 2
    line = _one_line_error(capsys)
    assert str(out / "model") in line and "does not exist" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value,expect", [("optim.lr=[1,", "--set optim.lr=[1,: not a valid YAML value"),
                                          ("optim.lr=!!python/object/apply:os.mkdir [MARK]", "--set optim.lr=")])
def test_bad_set_values_are_one_line(value, expect, tmp_path, capsys):
    value = value.replace("MARK", str(tmp_path / "made"))
    assert main(["train", "--set", value, "--output-dir", str(tmp_path / "r")]) == 2
    line = _one_line_error(capsys)
    assert expect in line and "not a valid YAML value" in line
    assert not (tmp_path / "made").exists() and not (tmp_path / "r").exists()  # no tag ran, nothing written


def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(bytes(range(256)) * 4)
    assert main(["train", str(cfg)]) == 2
    assert f"{cfg}: not a text file" in _one_line_error(capsys)


@pytest.mark.slow  # a CLI-trained teacher
def test_predict_on_a_decompression_bomb_is_one_line(teacher_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's bomb limit, scaled down: 100x100 > 2 x 1000
    Image.new("RGB", (100, 100), (0, 0, 0)).save(tmp_path / "bomb.png")
    assert main(["predict", str(teacher_dir), str(tmp_path / "bomb.png"), "--out", str(tmp_path / "p")]) == 2
    line = _one_line_error(capsys)
    assert str(tmp_path / "bomb.png") in line and "DecompressionBombError" in line
