"""Logged loss components are averaged over processes BY NAME: two processes logging different components (a
family's denoising losses exist only where the local batch has boxes) agree on the names first, and a name a
process lacks counts 0 there; before, the processes reduced vectors of different lengths (gloo aborted)."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from detrdistill.engine.metrics import mean_over_processes
from tests.cli_process import two_processes

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from accelerate import Accelerator
    from detrdistill.engine.metrics import mean_over_processes
    acc = Accelerator(cpu=True)
    mine = {"vfl": torch.tensor(1.0 + acc.process_index), "bbox": torch.tensor(2.0)}
    if acc.process_index == 0:
        mine["dn_vfl"] = torch.tensor(4.0)  # only this process's batch had boxes
    out = mean_over_processes(acc, mine)
    if acc.is_main_process:
        open(sys.argv[1], "w").write(json.dumps(out))
    # tear down as the engine does (finish_run): a process leaving with gloo's threads alive can abort the other
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()
""")


def test_one_process_keeps_the_order_and_values():
    acc = type("Acc", (), {"num_processes": 1, "device": torch.device("cpu"),
                           "reduce": staticmethod(lambda t, how: t)})()
    assert mean_over_processes(acc, {"b": torch.tensor(2.0), "a": torch.tensor(1.0)}) == {"b": 2.0, "a": 1.0}
    assert mean_over_processes(acc, {}) == {}


@pytest.mark.slow  # two processes (gloo)
def test_two_processes_with_different_components_average_by_name(tmp_path):
    script, out = tmp_path / "means.py", tmp_path / "out.json"
    script.write_text(SCRIPT)
    two_processes(str(script), str(out), port_base=29700, timeout=300)
    assert json.loads(out.read_text()) == {"bbox": 2.0, "dn_vfl": 2.0, "vfl": 1.5}
