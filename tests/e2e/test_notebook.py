"""examples/explore_lab.ipynb runs, cell by cell, against a lab kept by the demo.

No Jupyter needed: the code cells are executed in order in one namespace,
as a kernel would, and the results they leave behind are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "explore_lab.ipynb"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calico_ebpf.cli.main", "demo", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def kept_lab(monkeypatch):
    prefix = f"nb{uuid.uuid4().hex[:6]}"
    proc = _cli("--keep", "--prefix", prefix)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        monkeypatch.setenv("CALICO_EBPF_LAB_PREFIX", prefix)
        yield prefix
    finally:
        down = _cli("--down", "--prefix", prefix)
        assert down.returncode == 0, down.stdout + down.stderr


def test_notebook_cells_run_against_a_kept_lab(kept_lab):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    ns: dict = {}
    for i, source in enumerate(code):
        exec(compile(source, f"{NOTEBOOK.name}[{i}]", "exec"), ns)  # noqa: S102 - our own notebook
    assert ns["PREFIX"] == kept_lab == os.environ["CALICO_EBPF_LAB_PREFIX"]
    assert "10.96.0.10:80" in set(ns["frontends"]["frontend"])
    assert len(ns["backends"]) >= 3
    assert ns["flows"], "the demo's traffic left conntrack entries"
    trace = ns["trace"]
    assert trace.verdict == "allow" and trace.dnat is not None
