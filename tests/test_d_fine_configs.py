"""The D-FINE / DEIMv2 / RT-DETR configs (synthetic, CPU and GPU sizes): they validate, build their family with a teacher clearly larger than
its student, and the synthetic ones train and distill through the CLI (a D-FINE teacher distilled into a DEIMv2
student, every DETRDistill term logged beside DEIMv2's own losses)."""
from __future__ import annotations

from pathlib import Path

import pytest

from detrdistill.cli import main
from detrdistill.config import load_config
from detrdistill.engine.metrics import read_metrics
from detrdistill.errors import ConfigError
from detrdistill.models import build_model, count_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAIRS = [("synthetic_d_fine", "d_fine"), ("synthetic_deimv2", "deimv2"), ("cpu/bccd_d_fine", "d_fine"),
         ("cpu/bccd_deimv2", "deimv2"), ("cpu/bccd_rt_detr", "rt_detr"),
         # the GPU pairs of benchmarks/gpu/realtime.sh
         ("bccd_rt_detr", "rt_detr"), ("bccd_d_fine", "d_fine"), ("bccd_deimv2", "deimv2")]

pytestmark = pytest.mark.usefixtures("one_thread")


def _load(path: Path):
    try:
        return load_config(path)
    except ConfigError as e:  # the bccd configs read ${DETRDISTILL_DATA}
        if "DETRDISTILL_DATA" in str(e):
            pytest.skip("DETRDISTILL_DATA is not set and no shared data was found")
        raise


@pytest.mark.parametrize("stem,family", PAIRS, ids=[s for s, _ in PAIRS])
def test_configs_build_their_family_with_a_larger_teacher(stem, family):
    params = {}
    for who in ("teacher", "student"):
        cfg = _load(CONFIGS / f"{stem}_{who}.yaml")
        assert cfg.model.family == family and cfg.loss.recipe == "family"
        model = build_model(cfg.model, {0: "a", 1: "b", 2: "c"})
        assert model.config.model_type == family
        params[who] = count_parameters(model).total
    assert params["teacher"] > 3 * params["student"]


@pytest.mark.parametrize("stem,family", [("cpu/bccd_d_fine", "d_fine"), ("cpu/bccd_rt_detr", "rt_detr")])
def test_the_small_students_are_the_students_at_half_width(stem, family):
    """``*_student_small.yaml``: the same family, recipe, data and schedule as the student, about a quarter of its
    parameters (half the widths), 15x or more below the teacher."""
    cfg = {who: _load(CONFIGS / f"{stem}_{who}.yaml") for who in ("teacher", "student", "student_small")}
    small, student = cfg["student_small"], cfg["student"]
    assert small.model.family == family and small.model.d_model * 2 == student.model.d_model
    assert (small.data, small.loss, small.optim) == (student.data, student.loss, student.optim)
    assert small.train.model_copy(update={"output_dir": ""}) == student.train.model_copy(update={"output_dir": ""})
    params = {who: count_parameters(build_model(c.model, {0: "a", 1: "b", 2: "c"})).total for who, c in cfg.items()}
    assert params["student_small"] < params["student"] / 3 and params["teacher"] > 15 * params["student_small"]


def _sets(overrides):
    return sum((["--set", o] for o in overrides), [])


@pytest.mark.slow  # trains and distils through the CLI
def test_synthetic_configs_train_and_distill_from_the_cli(synth_dir, tmp_path):
    tiny = ["data.synthetic=true", f"data.synth_dir={synth_dir}", "data.synth_images=16", "data.synth_size=64",
            "data.min_size=[64]", "data.max_size=64", "data.eval_size=64", "train.max_steps=2",
            "train.progress=false", "train.device=cpu", "train.eval_every_epochs=0", "train.log_every=1"]
    teacher = tmp_path / "teacher"
    assert main(["train", str(CONFIGS / "synthetic_d_fine_teacher.yaml"), "--output-dir", str(teacher),
                 *_sets(tiny)]) == 0
    student = tmp_path / "student"
    assert main(["distill", str(CONFIGS / "synthetic_deimv2_student.yaml"), "--teacher", str(teacher / "model"),
                 "--output-dir", str(student), *_sets(tiny)]) == 0
    recs = [r for r in read_metrics(student / "metrics.jsonl") if "loss" in r]
    logged = {k.split("/", 1)[1] for k in recs[-1] if k.startswith("loss/")}
    assert {"mal", "fgl", "dn_mal", "logits_cls", "logits_bbox", "feature", "query_prior_mal",
            "query_prior_fgl"} <= logged
    assert sum(v for k, v in recs[-1].items() if k.startswith("loss/")) == pytest.approx(recs[-1]["loss"], rel=1e-4)
