"""No side effect on import; the data root comes from the user's environment only; removed keys stay readable."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detrdistill.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a fresh interpreter loading torch
def test_importing_the_package_sets_no_env_and_no_plot_backend():
    code = ("import os, sys; import detrdistill.cli, detrdistill.models.build, detrdistill.viz, detrdistill.demo; "
            "from detrdistill import DETRDistiller, DistillConfig, DistillationTrainer; "
            "print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TOKENIZERS_PARALLELISM'), "
            "'matplotlib.pyplot' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None", "False"]


def test_data_root_needs_the_env_var(monkeypatch, tmp_path):
    monkeypatch.delenv("DETRDISTILL_DATA", raising=False)
    override = ["data.train={ann_file: '${DETRDISTILL_DATA}/x/train.json', image_dir: '${DETRDISTILL_DATA}/x'}"]
    with pytest.raises(ConfigError, match="data.train.ann_file.*DETRDISTILL_DATA"):
        load_config(None, override)
    monkeypatch.setenv("DETRDISTILL_DATA", str(tmp_path))
    assert load_config(None, override).data.train.ann_file == f"{tmp_path}/x/train.json"


def test_removed_loss_criterion_key():
    assert load_config(None, ["loss.criterion=ours"]).loss.aux_loss is True  # configs saved before still load
    with pytest.raises(ConfigError, match="loss.criterion was removed"):
        load_config(None, ["loss.criterion=transformers"])
