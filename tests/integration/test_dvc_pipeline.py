"""`dvc repro` runs dvc.yaml's stages (data -> split -> train -> export -> bundle) in a temporary git
repository (no remote, no network), and a second `dvc repro` finds everything up to date."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")


def test_dvc_repro_runs_the_pipeline(tmp_path: Path) -> None:
    require(DVC.exists(), "dvc is not installed (pip install 'edgeship[dvc]')")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        return out

    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = (ROOT / "params.yaml").read_text()
    for old, new in (("stores: 6", "stores: 3"), ("items: 60", "items: 16"), ("days: 900", "days: 300"),
                     ("seed: 1", "seed: 3"), ("difficulty: hard", "difficulty: easy")):  # fmt: skip
        assert old in params
        params = params.replace(old, new)
    (repo / "params.yaml").write_text(params)
    run("git", "init", "-q")
    run(str(DVC), "init", "-q")
    run(str(DVC), "config", "core.analytics", "false")
    run(sys.executable, "-m", "edgeship", "keys", "init", "--out", "keys")
    (repo / ".gitignore").write_text("keys/\n")

    run(str(DVC), "repro")
    lock = (repo / "dvc.lock").read_text()
    for stage in ("data:", "split:", "train:", "export:", "bundle:"):
        assert stage in lock, stage
    split = json.loads((repo / "split" / "split.json").read_text())
    metrics = json.loads((repo / "metrics.json").read_text())
    assert split["rows"]["window"] > split["rows"]["validation"] > 0 and len(split["dataset_version"]) == 64
    assert metrics["dataset"]["valid_rows"] > 0 and metrics["bundle"]
    variants = json.loads((repo / "export" / "variants.json").read_text())
    assert variants["version"] == metrics["version"] and set(variants["variants"]) == set(metrics["shipped_variants"])
    assert all((repo / "export" / v["file"]).is_file() for v in variants["variants"].values())
    assert len(list((repo / "dist").glob("*.bundle.tar"))) == 1 and (repo / "dist" / "manifest.json").is_file()

    again = run(str(DVC), "repro")
    assert "didn't change" in again.stdout or "up to date" in again.stdout, again.stdout
    status = run(str(DVC), "status")
    assert "up to date" in status.stdout.lower(), status.stdout
