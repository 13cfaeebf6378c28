"""Release hygiene: ``python -m build`` makes an sdist and a wheel, ``twine check`` passes, the version
comes from one place (edgeship/__init__.py) and the wheel installs no ``tests`` or ``bench`` package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgeship import __version__

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_sdist_and_wheel_carry_the_one_version(dist):
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"edgeship-{__version__}-py3-none-any.whl", f"edgeship-{__version__}.tar.gz"], names


def test_twine_check_passes(dist):
    run = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_wheel_installs_only_the_project_packages(dist):
    wheel = next(dist.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        tops = {n.split("/")[0] for n in zf.namelist() if not n.split("/")[0].endswith(".dist-info")}
        meta = zf.read(f"edgeship-{__version__}.dist-info/METADATA").decode()
    assert tops == {"edgeship", "edge", "cloud", "models", "firmware_bridge"}, tops
    assert f"Version: {__version__}" in meta and "Provides-Extra: edge-legacy" in meta


def test_cli_shows_the_version():
    run = subprocess.run([sys.executable, "-m", "edgeship", "--version"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)  # fmt: skip
    assert run.stdout.strip() == f"edgeship {__version__}"
