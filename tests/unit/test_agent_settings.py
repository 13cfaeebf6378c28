"""Agent settings: the TOML file (deploy/agent.toml), EDGESHIP_* variables over it, flags over both,
``--print-config`` showing the merge; errors name the setting and its source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.settings import SettingsError, env_fields, resolve
from edgeship.cli import build_parser
from edgeship.commands.agent import config_from_args

REPO = Path(__file__).resolve().parents[2]


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


BASE = 'device_id = "store-1"\nstate_dir = "state"\ntrust = ["signing.pub"]\nhttp = "127.0.0.1:8080"\n[batching]\nmax_wait_ms = 1\nmax_rows = 64\n'


def test_shipped_example_is_valid():
    config, sources = resolve(REPO / "deploy" / "agent.toml", {}, {})
    assert config.device_id == "store-1" and config.state_dir == Path("/var/lib/edgeship")
    assert config.attributes == {"store_type": "A", "hardware": "rpi4"} and sources["batching.max_wait_ms"] == "file"


def test_env_overrides_file_and_flags_override_both(tmp_path):
    path = _file(tmp_path, BASE)
    env = {"EDGESHIP_HTTP": "0.0.0.0:9000", "EDGESHIP_DEVICE_ID": "from-env", "EDGESHIP_BATCHING__MAX_WAIT_MS": "2.5",
           "EDGESHIP_TRUST": "a.pub,b.pub", "EDGESHIP_MQTT_PASSWORD": "not a setting"}  # fmt: skip
    args = build_parser().parse_args(["agent", "--config", str(path), "--device-id", "from-flag", "--option", "batching.max_rows=8"])
    config = config_from_args(args, env)
    assert config.device_id == "from-flag"  # flag > env > file
    assert config.http == "0.0.0.0:9000"  # env > file
    assert config.batching.max_wait_ms == 2.5 and config.batching.max_rows == 8  # sections merge field by field
    assert config.trust == [Path("a.pub"), Path("b.pub")]  # env lists, as given (relative to the cwd)
    assert config.state_dir == tmp_path / "state"  # a file's relative path: relative to the file


def test_config_file_from_environment_variable(tmp_path):
    path = _file(tmp_path, BASE)
    config, _ = resolve(None, {"EDGESHIP_CONFIG": str(path)}, {})
    assert config.device_id == "store-1"


@pytest.mark.parametrize(
    ("text", "env", "match"),
    [
        (BASE.replace("max_rows = 64", "max_rows = 0"), {}, r"batching\.max_rows \(file .*agent\.toml\)"),
        (BASE, {"EDGESHIP_THREADS": "many"}, r"threads \(env EDGESHIP_THREADS\)"),
        (BASE + "colour = 'red'\n", {}, r"colour \(file"),
        (BASE.replace('device_id = "store-1"\n', ""), {}, r"device_id: required \(give --device-id, EDGESHIP_DEVICE_ID"),
        ("device_id = \n", {}, r"not valid TOML"),
    ],
)
def test_errors_name_setting_and_source(tmp_path, text, env, match):
    with pytest.raises(SettingsError, match=match):
        resolve(_file(tmp_path, text), env, {})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        resolve(tmp_path / "nope.toml", {}, {})


def test_env_ignores_unrelated_variables():
    assert env_fields({"EDGESHIP_MQTT_USERNAME": "u", "EDGESHIP_LOG": "x", "PATH": "/bin"}) == {}


def test_print_config_shows_the_merge(tmp_path):
    path = _file(tmp_path, BASE)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGESHIP_")},
           "PYTHONPATH": str(REPO), "EDGESHIP_HTTP": "127.0.0.1:9999"}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "edgeship", "agent", "--config", str(path), "--print-config",
                          "--threads", "2"], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["device_id"] == "store-1" and shown["http"] == "127.0.0.1:9999" and shown["threads"] == 2
    assert shown["batching"]["max_rows"] == 64 and shown["state_dir"] == str(tmp_path / "state")
    assert '"http": "env"' in out.stderr and '"threads": "flag"' in out.stderr
    bad = subprocess.run([sys.executable, "-m", "edgeship", "agent", "--config", str(path), "--print-config",
                          "--threads", "0"], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "threads (flag --threads)" in bad.stderr
