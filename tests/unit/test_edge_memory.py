"""edge.memory: the agent's process settings (OpenBLAS threads, malloc arenas, malloc_trim), applied by
the `edgeship agent` entry point before numpy loads and never by cloud commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.memory import release_free_memory, tune_process
from edgeship.cli import _command

ROOT = Path(__file__).resolve().parents[2]

# Runs the real CLI entry (argv=None) and reports what the process looked like when tune_process ran.
_PROBE = """
import json, os, sys
import edge.memory as m
seen = {}
real = m.tune_process
def spy(*a, **k):
    seen["numpy_loaded_before"] = "numpy" in sys.modules
    return real(*a, **k)
m.tune_process = spy
from edgeship.cli import main
sys.argv = ["edgeship", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
print(json.dumps({"seen": seen, "openblas": os.environ.get("OPENBLAS_NUM_THREADS")}))
"""


def _probe(args: list[str], tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MALLOC_ARENA_MAX")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_agent_entry_point_tunes_the_process_before_numpy_loads(tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text("unused: --print-config does not read it\n")
    got = _probe(["--log-level", "warning", "agent", "--print-config", "--device-id", "d1", "--state-dir",
                  str(tmp_path / "s"), "--trust", str(pub)], tmp_path)  # fmt: skip
    assert got["seen"] == {"numpy_loaded_before": False}
    assert got["openblas"] == "1"


def test_cloud_commands_keep_numpy_and_glibc_defaults(tmp_path: Path) -> None:
    got = _probe(["data", "synth", "--help"], tmp_path)
    assert got["seen"] == {}
    assert got["openblas"] is None


def test_command_word_skips_the_log_level_value() -> None:
    assert _command(["--log-level", "debug", "agent", "--http", "x"]) == "agent"
    assert _command(["agent", "rollback"]) == "agent"
    assert _command(["--version"]) is None
    assert _command(["train", "--data", "agent"]) == "train"


def test_tune_process_keeps_what_the_environment_chose() -> None:
    env = {"OPENBLAS_NUM_THREADS": "4", "MALLOC_ARENA_MAX": "1"}
    done = tune_process(env)
    assert env["OPENBLAS_NUM_THREADS"] == "4" and done == {"OPENBLAS_NUM_THREADS": "4"}
    env = {}
    done = tune_process(env)
    assert env == {"OPENBLAS_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        assert done["malloc_arena_max"] == "2"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim: Linux only")
def test_release_free_memory_returns_freed_heap_pages() -> None:
    def rss_kb() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    release_free_memory()
    freed, kept = [], []
    for _ in range(400):  # 64 KiB blocks (malloc's heap, below its mmap threshold), interleaved
        freed.append(bytearray(65536))
        kept.append(bytearray(65536))
    del freed  # ≈ 25 MiB of holes in the middle of the heap: free() alone keeps them resident
    high = rss_kb()
    assert release_free_memory() is True
    assert rss_kb() < high - 8192
    del kept
