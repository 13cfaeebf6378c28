"""The reference firmware's C core, built with gcc under ASan/UBSan and run against the golden vectors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware_bridge" / "firmware"


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc is not installed (scripts/test-deps.sh installs it)")
    out = tmp_path_factory.mktemp("fw") / "test_esp_protocol"
    cmd = [gcc, "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", str(FIRMWARE / "esp_protocol.c"),
           str(FIRMWARE / "test_esp_protocol.c"), "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    return out


def test_c_core_matches_the_golden_vectors_under_sanitizers(binary):
    r = subprocess.run([str(binary), str(FIRMWARE / "vectors.json")], capture_output=True, text=True, timeout=60,
                       env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1"})  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok ") and int(r.stdout.split()[1]) > 300


def test_c_test_fails_on_a_wrong_vector(binary, tmp_path):
    bad = (FIRMWARE / "vectors.json").read_text().replace('"crc": 10673', '"crc": 10674')
    (tmp_path / "v.json").write_text(bad)
    r = subprocess.run([str(binary), str(tmp_path / "v.json")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "crc16 vector 0" in r.stderr
