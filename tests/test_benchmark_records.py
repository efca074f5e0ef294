"""The timing benchmarks (speed, data pipeline, ONNX latency) record the environment they ran in, as the
distillation benchmark's runs do, and their reports show it (an older record without one says so)."""
import json

import pytest
import torch

from benchmarks import data_speed, run_env, speed

onnx_latency = pytest.importorskip("benchmarks.onnx_latency")


def _env():
    env = run_env.environment(1)
    assert env["device"] and "torch" in env and "commit" in env  # what describe() renders
    return env


def test_speed_and_data_reports_show_the_environment_or_that_it_was_not_recorded():
    env = _env()
    res = {"device": "cpu", "date": "2026-12-06", "torch": "2.13", "command": "c", "models": [], "distill": [],
           "configs": [], "environment": env}
    for render in (speed.markdown, data_speed.markdown):
        assert f"environment: {run_env.describe(env)}" in render(res)
        assert "environment: not recorded" in render({k: v for k, v in res.items() if k != "environment"})


def test_onnx_latency_report_shows_the_environment(tmp_path):
    env = _env()
    res = {"command": "c", "date": "2026-12-06", "device": "cpu", "threads": 1, "runs": 3, "warmup": 1,
           "models": [], "environment": env}
    out = tmp_path / "lat.md"
    onnx_latency.write_markdown(res, out)
    assert f"environment: {run_env.describe(env)}" in out.read_text()


def test_data_speed_runs_end_to_end_on_a_small_coco_set(tmp_path, synth_dir):
    """The data benchmark's main path (a config, its training split, cached vs uncached) runs and writes its files."""
    cfg = tmp_path / "student.yaml"
    cfg.write_text(f"data:\n  train: {{ann_file: {synth_dir / 'train.json'}, image_dir: {synth_dir / 'images'}}}\n"
                   f"  val: {{ann_file: {synth_dir / 'val.json'}, image_dir: {synth_dir / 'images'}}}\n"
                   "  min_size: [64]\n  max_size: 64\n  eval_size: 64\n")
    out = tmp_path / "data.json"
    threads = torch.get_num_threads()
    try:
        assert data_speed.main(["--configs", str(cfg), "--rounds", "2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # main() runs one thread; the tests after this one keep their count
    (row,) = json.loads(out.read_text())["configs"]
    assert row["images"] == 16 and row["identical_items"] is True and row["cached_ms_per_image"] > 0
    assert "environment: " in out.with_suffix(".md").read_text()


def test_onnx_latency_pairs_each_teacher_with_its_student_variants(tmp_path):
    """``<name>_student_<variant>.yaml`` is a student of ``<name>_teacher.yaml`` (same folder), another name is not;
    the report gives one teacher / student ratio per pair."""
    configs = ["c/x_teacher.yaml", "c/x_student.yaml", "c/x_student_small.yaml", "c/xy_student.yaml",
               "d/x_student.yaml", "c/y_teacher.yaml"]
    assert onnx_latency.students_of("c/x_teacher.yaml", configs) == ["c/x_student.yaml", "c/x_student_small.yaml"]
    assert onnx_latency.students_of("c/y_teacher.yaml", configs) == []
    model = {"family": "f", "params": 1e6, "image": [4, 4], "max_abs_diff": {"logits": 0.0, "pred_boxes": 0.0}}
    res = {"command": "c", "date": "2026-12-06", "device": "cpu", "threads": 1, "runs": 3, "warmup": 1,
           "models": [{**model, "config": c, "onnxruntime_s": s, "pytorch_s": 2 * s}
                      for c, s in (("c/x_teacher.yaml", 0.04), ("c/x_student.yaml", 0.02),
                                   ("c/x_student_small.yaml", 0.01))]}
    out = tmp_path / "lat.md"
    onnx_latency.write_markdown(res, out)
    text = out.read_text()
    assert "`c/x_teacher.yaml` / `c/x_student.yaml`: 2.0x (onnxruntime)" in text
    assert "`c/x_teacher.yaml` / `c/x_student_small.yaml`: 4.0x (onnxruntime)" in text


def test_onnx_latency_default_configs_list_each_teacher_before_its_students():
    configs = onnx_latency.default_configs()
    teachers = [c for c in configs if c.endswith("_teacher.yaml")]
    assert teachers and all(configs.index(s) > configs.index(t) for t in teachers
                            for s in onnx_latency.students_of(t, configs))
    assert "configs/cpu/bccd_rt_detr_student_small.yaml" in configs
