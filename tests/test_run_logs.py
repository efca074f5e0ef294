"""What a user reads in a redirected log (not a terminal): the start-up block, the teacher's cost and class map,
and progress at the documented interval, each line once. Checked on the files the CLI writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # a distillation through the CLI in a subprocess

REPO = Path(__file__).resolve().parents[1]


def _cli_to_log(args: list[str], log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with open(log, "w") as err:
        done = subprocess.run([sys.executable, "-m", "detrdistill.cli", *args], stdout=subprocess.DEVNULL, stderr=err,
                              env=env, timeout=600)
    assert done.returncode == 0, log.read_text()[-3000:]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_a_redirected_distill_log_reads_once_through(tmp_path, synth_dir):
    steps = ["train.max_steps=6", "train.log_every=1", "train.progress=true", "train.eval_every_epochs=0"]
    teacher_log, distill_log = tmp_path / "teacher.log", tmp_path / "distill.log"
    _cli_to_log(["train", *_sets(tiny_overrides(tmp_path / "teacher", synth_dir, *steps))], teacher_log)
    # a teacher whose processor would enlarge the 64 px images to 192 px (9x the pixels), fed as it asks
    proc_file = tmp_path / "teacher" / "model" / "preprocessor_config.json"
    proc = json.loads(proc_file.read_text())
    proc["size"] = {"shortest_edge": 192, "longest_edge": 192}
    proc_file.write_text(json.dumps(proc))
    _cli_to_log(["distill", *_sets(tiny_overrides(tmp_path / "student", synth_dir, *steps,
                                                  "distill.teacher_input=processor")),
                 "--teacher", str(tmp_path / "teacher" / "model")], distill_log)

    for log, mode, out in ((teacher_log, "train", tmp_path / "teacher"), (distill_log, "distill", tmp_path / "student")):
        text = log.read_text()
        lines = text.splitlines()
        # the start-up block: images, parameters, device, output folder, steps; the estimate after step 2
        assert f"INFO {mode} {out}: 16 train images, 4 val images; 4 per batch, 4 steps per epoch" in text
        assert "INFO   model deformable_detr: " in text and " parameters (" in text
        assert "INFO   device cpu, 1 thread, 1 process, float32; output folder " + str(out) in text
        assert "INFO   6 steps (1.5 epochs); metrics every step, evaluation at the end" in text
        assert len([ln for ln in lines if "estimated time: step 1 took" in ln and "for the 4 steps left" in ln]) == 1
        # progress: start and end (the 30 s interval is never reached here), not one line per logged step
        progress = [ln for ln in lines if ln.startswith(f"{mode} {out.name}:")]
        assert len(progress) == 2 and progress[0].endswith("0/6 (0%)") and " 6/6 (100%)" in progress[1], progress
        assert len(set(progress)) == len(progress)
        assert "\r" not in text
    text = distill_log.read_text()
    assert "teacher " + str(tmp_path / "teacher" / "model") + ": " in text and "parameters (frozen)" in text
    cost = [ln for ln in text.splitlines() if "distill.teacher input" in ln]
    assert len(cost) == 1 and "distill.teacher input 4 x 3 x 192 x 192 (resized by its processor" in cost[0]
    assert "student input 4 x 3 x 64 x 64" in cost[0] and "s per step" in cost[0]
    assert "9x the student's pixels: distill.teacher_input=auto (never enlarges)" in cost[0]
    assert len([ln for ln in text.splitlines() if "distill.teacher classes: the dataset's 5, same ids" in ln]) == 1
