"""benchmarks/speed.py runs end to end on tiny models (every part: model steps, the engine loop, the distilled step
with its profile, matching) and writes its JSON and Markdown: a benchmark that only fails when someone finally runs
it on a GPU is no benchmark."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def test_every_part_runs_on_a_tiny_pair_and_writes_its_report(tmp_path, synth_dir):
    teacher, student = tmp_path / "big.yaml", tmp_path / "small.yaml"
    teacher.write_text("model:\n  decoder_layers: 3\n  ffn_dim: 64\n")
    student.write_text("model:\n  decoder_layers: 2\n  ffn_dim: 32\n")
    sets = [a for o in TINY + [f"data.synth_dir={synth_dir}"]
            if not o.startswith(("model.decoder_layers", "model.ffn_dim")) for a in ("--set", o)]
    out = tmp_path / "speed.json"
    cmd = [sys.executable, "benchmarks/speed.py", "--configs", str(student), "--pair", str(teacher), str(student),
           "--steps", "1", "--match", "2", "2", "5", "5", "--threads", "1", *sets, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [m["config"] for m in res["models"]] == [str(student)]
    assert res["models"][0]["engine_step_s"] > 0
    (row,) = res["distill"]  # the --pair, though its names are not X_teacher / X_student
    assert (row["teacher"], row["student"]) == (str(teacher), str(student))
    assert row["distill_step_s"] > 0 and row["teacher_forward_s"] > 0 and row["profile_s"]
    assert res["matching"]["threads"]["threads"] == 1
    assert res["environment"]["commit"] and res["device"]
    md = out.with_suffix(".md").read_text()
    assert "distilled step s" in md and "Matching 2 images" in md


def test_a_bad_config_is_one_line_naming_the_field(tmp_path, synth_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  decoder_layers: 1\n")
    sets = [a for o in TINY + [f"data.synth_dir={synth_dir}"] if not o.startswith("model.decoder_layers")
            for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "benchmarks/speed.py", "--configs", str(bad), "--parts", "models",
                           "--steps", "1", *sets, "--out", str(tmp_path / "s.json")],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.decoder_layers=1:")
