"""docs/onnx.md's code (onnxruntime + numpy + PIL, no detrdistill) finds the detections ``detrdistill predict``
finds, for one family of each kind the registry holds (activation x padding rule x pixel-mask input x static
ONNX size)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'detrdistill[onnx]')")

from tests.registry_models import export_size, representative_families  # noqa: E402
from tests.test_deploy_families import (assert_same_detections, from_records, image_files,  # noqa: E402
                                        saved_model_dir)

# slow: ONNX export of every family
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
DOC = Path(__file__).resolve().parents[1] / "docs" / "onnx.md"

_DRIVER = """
import json, runpy, sys
doc = runpy.run_path(sys.argv[1])            # the page's code block (its __main__ part does not run)
session, meta = doc["load"](sys.argv[2])
found = {path: doc["detect"](session, meta, path, threshold=0.0) for path in sys.argv[3:]}
imported = sorted(m for m in ("torch", "transformers", "detrdistill") if m in sys.modules)
print(json.dumps({"found": found, "imported": imported}))
"""


def doc_code() -> str:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if "def detect(" in b]
    assert len(blocks) == 1, "docs/onnx.md: expected one python block defining detect()"
    return blocks[0]


@pytest.mark.parametrize("family", representative_families())
def test_the_docs_code_finds_what_predict_finds(family, tmp_path):
    from detrdistill.export.onnx_export import export_model_dir
    from detrdistill.predict import predict

    model_dir = saved_model_dir(family, tmp_path)
    onnx_file = export_model_dir(model_dir, tmp_path / "m.onnx", *export_size(family), check=False)["path"]
    files = image_files(tmp_path)
    records = json.loads(predict(model_dir, files, tmp_path / "pred", threshold=0.0,
                                 progress=False).predictions_file.read_text())
    script = tmp_path / "onnx_detect.py"
    script.write_text(doc_code())
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(script), str(onnx_file), *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] == []  # onnxruntime, numpy and PIL only
    for image_id, path in enumerate(files, start=1):
        theirs = out["found"][str(path)]
        assert {d["category_id"] for d in theirs} <= {5, 9, 2}  # the dataset's ids from the metadata
        theirs = [{"label": d["label"], "score": d["score"], "box": d["box_xyxy"]} for d in theirs]
        assert_same_detections(from_records(records, image_id), theirs, score_tol=1e-3, box_tol=0.05)
