"""Where the agent's settings come from: a TOML file, then ``EDGESHIP_*`` variables, then flags.

One model, :class:`edge.config.AgentConfig`, validates the merged result; each layer overrides the
one before it, key by key (sections such as ``[batching]`` merge field by field)::

    # /etc/edgeship/agent.toml                    # environment                       # flags
    device_id = "store-1"                         EDGESHIP_HTTP=0.0.0.0:8080          --device-id store-7
    state_dir = "/var/lib/edgeship"               EDGESHIP_BATCHING__MAX_WAIT_MS=2
    trust = ["signing.pub"]    # relative to the file's folder
    [batching]
    max_wait_ms = 1

    >>> import os, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "agent.toml").write_text(
    ...     'device_id = "store-1"\\nstate_dir = "state"\\ntrust = ["signing.pub"]\\n[batching]\\nmax_wait_ms = 1\\n')
    >>> cfg, sources = resolve(d / "agent.toml", {"EDGESHIP_BATCHING__MAX_WAIT_MS": "2"}, {"device_id": "store-7"})
    >>> cfg.device_id, cfg.batching.max_wait_ms, cfg.state_dir == d / "state", sources["device_id"]
    ('store-7', 2.0, True, 'flag')

Environment names: ``EDGESHIP_`` + the field in capitals, a section's field after ``__``
(``EDGESHIP_TELEMETRY__INTERVAL_S``). Lists are comma-separated or JSON (``EDGESHIP_TRUST=a.pub,b.pub``),
``EDGESHIP_ATTRIBUTES=store_type=A,cluster=13``. ``EDGESHIP_CONFIG`` names the file when
``--config`` is not given. Variables that name no setting (``EDGESHIP_MQTT_PASSWORD`` and other
credentials, read by :mod:`models.broker`) are left alone. Errors name the setting and its source.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edge.config import AgentConfig

__all__ = ["ENV_PREFIX", "SettingsError", "resolve", "file_fields", "env_fields", "merge"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "EDGESHIP_"
#: Settings holding paths: a relative path in the file is relative to the file's folder.
_PATH_FIELDS = ("state_dir", "trust", "trust_root")


class SettingsError(ValueError):
    """A setting is missing, unreadable or invalid; the message names the setting and where it came from."""


def file_fields(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings of a TOML file (relative paths resolved against its folder)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    for key in _PATH_FIELDS:
        value = data.get(key)
        if isinstance(value, str):
            data[key] = str(base / value)
        elif isinstance(value, list):
            data[key] = [str(base / v) if isinstance(v, str) else v for v in value]
    return data


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (list, tuple):
        return True
    return any(_is_list(a) for a in typing.get_args(annotation))


def _is_dict(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict or any(_is_dict(a) for a in typing.get_args(annotation))


def _section(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _env_value(raw: str, annotation: Any) -> Any:
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    if _is_list(annotation) or _is_dict(annotation):  # dicts: "k=v,k2=v2" → the KEY=VALUE pairs validator
        return [part.strip() for part in text.split(",") if part.strip()]
    if text.lower() in ("", "none", "null") and type(None) in typing.get_args(annotation):
        return None
    return raw


def env_fields(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings named by ``EDGESHIP_*`` variables (others are ignored)."""
    out: dict[str, Any] = {}
    for name, field in AgentConfig.model_fields.items():
        section = _section(field.annotation)
        if section is None:
            key = ENV_PREFIX + name.upper()
            if key in environ:
                out[name] = _env_value(environ[key], field.annotation)
            continue
        for sub, subfield in section.model_fields.items():
            key = f"{ENV_PREFIX}{name.upper()}__{sub.upper()}"
            if key in environ:
                out.setdefault(name, {})[sub] = _env_value(environ[key], subfield.annotation)
    return out


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers override earlier ones key by key; nested sections merge field by field."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "attributes":
                out[key] = merge(out[key], value)
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def _sources(layers: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for source, layer in layers.items():
        for key, value in layer.items():
            if isinstance(value, Mapping) and _section(getattr(AgentConfig.model_fields.get(key), "annotation", None)):
                for sub in value:
                    found[f"{key}.{sub}"] = source
            else:
                found[key] = source
    return found


def resolve(
    config_file: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
    flags: Mapping[str, Any],
) -> tuple[AgentConfig, dict[str, str]]:
    """The merged :class:`AgentConfig` and, for each setting given, where it came from
    (``"file"``, ``"env"`` or ``"flag"``). ``config_file`` None → ``EDGESHIP_CONFIG`` if set.

    Raises :class:`SettingsError` naming the setting, the rule and the source."""
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = environ[ENV_PREFIX + "CONFIG"]
    layers = {
        f"file {config_file}": file_fields(config_file) if config_file is not None else {},
        "env": env_fields(environ),
        "flag": dict(flags),
    }
    sources = _sources(layers)
    try:
        config = AgentConfig(**merge(*layers.values()))
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "config"
            where = sources.get(loc) or sources.get(loc.split(".")[0]) or "default"
            if err["type"] == "missing":
                flag, env = "--" + loc.replace("_", "-"), ENV_PREFIX + loc.upper().replace(".", "__")
                problems.append(f"{loc}: required (give {flag}, {env} or {loc} in the config file)")
                continue
            if where == "env":
                where = "env " + ENV_PREFIX + loc.upper().replace(".", "__")
            elif where == "flag":
                where = "flag --" + loc.replace("_", "-")
            problems.append(f"{loc} ({where}): {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    return config, {k: ("file" if v.startswith("file ") else v) for k, v in sources.items()}
