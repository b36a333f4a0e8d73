"""medsam_gui.runtime.tune_memory: torch's large CPU tensors on transparent huge pages, so a
64 MiB activation costs ~32 page faults instead of 16384 (the cause of 1.1-1.3 million faults
and ~3 s of kernel time per MedSAM encoder pass on the 2-core machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medsam_gui import runtime

PROBE = r"""
import json, resource, sys
from medsam_gui import runtime
ok = runtime.tune_memory() if sys.argv[1] == "tune" else None
assert sys.argv[1] != "tune" or runtime.tune_memory() == ok  # idempotent
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
small = []
for _ in range(6):  # 4 MiB tensors (the MedSAM decoder's size): kept on the heap for reuse
    f0 = faults()
    y = torch.ones(1 << 20)
    small.append(faults() - f0)
    del y
counts = []
for _ in range(4):
    f0 = faults()
    x = torch.ones(16 << 20)  # 64 MiB, written once
    counts.append(faults() - f0)
    del x
print(json.dumps({"ok": ok, "faults": counts, "small": small}))
"""


def _probe(mode, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("MEDSAM_GUI_MALLOC", "THP_MEM_ALLOC_ENABLE")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(runtime.thp_mode() not in ("always", "madvise"),
                    reason="the kernel has transparent huge pages off")
def test_tuned_process_faults_large_tensors_in_huge_pages():
    plain = _probe("plain")
    tuned = _probe("tune")
    assert tuned["ok"] is True
    if runtime.thp_mode() == "madvise":  # without the tuning every 4 KiB page faults
        assert min(plain["faults"]) > 8000, plain
    assert max(tuned["faults"]) < 1000, tuned
    assert min(tuned["small"][-3:]) < 100, tuned  # after warm-up: reused, not faulted in again


def test_opt_out_and_explicit_user_setting_are_respected():
    res = _probe("tune", MEDSAM_GUI_MALLOC="system")
    assert res["ok"] is False
    res = _probe("tune", THP_MEM_ALLOC_ENABLE="0")
    assert res["ok"] is False
    if runtime.thp_mode() == "madvise":
        assert min(res["faults"]) > 8000, res


def test_thp_mode_parsing(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert runtime.thp_mode(f) == "madvise"
    f.write_text("always madvise [never]\n")
    assert runtime.thp_mode(f) == "never"
    assert runtime.thp_mode(tmp_path / "missing") is None
