"""Structured logs: one JSON object per line, ready for fluentd, Loki or Elasticsearch as they are.

Under systemd (stderr is the journal: ``$JOURNAL_STREAM`` names it) each line starts with its syslog
priority, ``<3>`` … ``<7>``, which journald strips and keeps as the entry's priority, so
``journalctl -u edgeship-agent -p warning`` works while the message stays one JSON object.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

import os

__all__ = ["JsonFormatter", "JournalPriority", "setup_logging", "stderr_is_journal"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}  # uvicorn adds color_message


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


#: logging level → syslog priority (sd-daemon(3) prefixes).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalPriority(logging.Formatter):
    """Another formatter's line with ``<priority>`` in front (journald's SyslogLevelPrefix).

    >>> JournalPriority(logging.Formatter("%(message)s")).format(logging.makeLogRecord({"msg": "hi", "levelno": 30}))
    '<4>hi'
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for lvl, p in sorted(_PRIORITY.items(), reverse=True) if record.levelno >= lvl), 7)
        return f"<{prio}>" + self.inner.format(record).replace("\n", " ")


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to the journal (``$JOURNAL_STREAM`` = its device:inode)."""
    dev_ino = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return dev_ino == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JournalPriority(formatter) if stderr_is_journal() else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("absl", "tensorflow", "h5py", "tf2onnx", "amqtt", "transitions", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
