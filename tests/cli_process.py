"""Run the CLI in a fresh interpreter and see what it imported (config and path mistakes are reported before torch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_in_fresh_process(*argv: str, cwd=None, env=None) -> dict:
    """``detrdistill.cli.main(argv)`` in a new interpreter: ``{rc, out, err, imported}``, ``imported`` being which of
    torch / transformers / accelerate it had imported when it returned."""
    code = ("import io, json, sys, contextlib\n"
            "from detrdistill.cli import main\n"
            "out, err = io.StringIO(), io.StringIO()\n"
            "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            f"    rc = main({list(argv)!r})\n"
            "print(json.dumps({'rc': rc, 'out': out.getvalue(), 'err': err.getvalue(),\n"
            "                  'imported': [m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules]}))\n")
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def two_processes(*target: str, port_base: int, timeout: int = 600) -> None:
    """``python -m torch.distributed.run --nproc_per_node 2 TARGET...`` (gloo on CPU), one thread each, this
    repository importable, on a port from ``port_base`` (one base per test file); asserted to exit 0."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port_base + os.getpid() % 1000), *target],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
