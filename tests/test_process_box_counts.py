"""The RT-DETR-family losses normalised over processes, as the official trainers do (models/process_box_counts.py).

Two processes whose batches hold different numbers of boxes (8 and 2): the mean over processes of each
count-normalised term (the gradient DDP applies) equals the term of one process that sees the four images at once.
transformers alone divides by each process's own count, which weighs the 2-box batch's boxes four times as much.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from detrdistill.models.process_box_counts import count_of
from tests.cli_process import two_processes

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    from detrdistill.config import LossConfig
    from detrdistill.models.family_loss import student_criterion
    from tests.test_adapters import batch, make_adapter

    name, out_file = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    adapter = make_adapter(name)
    adapter.train()
    for m in adapter.modules():  # batch statistics and dropout would tie an image's outputs to its batch
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)):
            m.eval()
    crit = student_criterion(LossConfig(recipe="family"), adapter)
    pix0, mask0, t0 = batch(seed=0, name=name)  # 3 + 5 boxes
    pix1, mask1, t1 = batch(seed=1, name=name)
    t1 = [{k: v[:1] for k, v in t.items()} for t in t1]  # 1 + 1 boxes

    def terms(pix, mask, targets):
        out = adapter(pix, mask, targets=targets, criterion=crit)
        return {k: float(v) for k, v in out.loss_dict.items()}, float(out.loss)

    # one process, the four images at once (before any process group exists)
    whole, _ = terms(torch.cat([pix0, pix1]), torch.cat([mask0, mask1]), t0 + t1)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    mine, total = terms(*((pix0, mask0, t0) if rank == 0 else (pix1, mask1, t1)))
    got = [None, None]
    torch.distributed.all_gather_object(got, (mine, total))
    if rank == 0:
        open(out_file, "w").write(json.dumps({"whole": whole, "processes": got}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
""")


def _two_processes(name: str, tmp_path: Path) -> dict:
    script, out = tmp_path / "counts.py", tmp_path / "out.json"
    script.write_text(SCRIPT)
    two_processes(str(script), name, str(out), port_base=29800)
    return json.loads(out.read_text())


@pytest.mark.slow  # two processes (gloo)
@pytest.mark.parametrize("name,checked", [("rt_detr", ("vfl", "bbox", "giou")),
                                          ("d_fine", ("vfl", "bbox", "giou", "fgl")),
                                          ("deimv2", ("mal", "bbox", "giou", "fgl"))])
def test_terms_averaged_over_processes_equal_one_process_over_the_whole_batch(name, checked, tmp_path):
    res = _two_processes(name, tmp_path)
    whole, (p0, p1) = res["whole"], res["processes"]
    for key in checked:  # every stage summed; denoising terms excluded (their group count follows the batch)
        mean = (p0[0][key] + p1[0][key]) / 2
        assert mean == pytest.approx(whole[key], rel=1e-4), (key, p0[0][key], p1[0][key], whole[key])
    for (parts, total) in (p0, p1):  # the logged parts still sum to the loss the step minimises
        assert sum(parts.values()) == pytest.approx(total, rel=1e-5)


def test_which_count_each_term_divides_by():
    assert count_of("RTDetrLoss", "loss_vfl_dn_2") == "gt" and count_of("DFineLoss", "loss_fgl_aux_1") == "gt"
    assert count_of("DFineLoss", "loss_ddf_aux_0") is None and count_of("Deimv2Loss", "loss_ddf", True) is None
    assert count_of("Deimv2Loss", "loss_giou_aux_3", True) == "union"
    assert count_of("Deimv2Loss", "loss_mal", True) == "gt"
    assert count_of("Deimv2Loss", "loss_bbox_dn_0", True) == "gt" and count_of("Deimv2Loss", "loss_bbox", False) == "gt"
    with pytest.raises(ValueError):
        count_of("LwDetrLoss", "loss_bbox")

