"""Build the reference shelf-label sketch for the host and read what it says (tests only).

The sketch (``firmware_bridge/firmware/shelf_label/shelf_label.ino``) is compiled with g++ against
the minimal Arduino stand-in in ``tests/firmware_shim/`` (Serial on stdin/stdout, simulated
``millis()``, a button pressed by SIGUSR1), with ``esp_protocol.c`` built by gcc, both with
``-Wall -Wextra -Werror`` and ASan/UBSan::

    exe = build_sketch(tmp_path)
    dev = SketchProcess(exe)            # or SketchProcess(exe, fd=pty_master) to face a real bridge
    dev.wait(lambda f: isinstance(f.message, Hello))
    dev.press(); dev.close()
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from firmware_bridge.protocol import Decoder, Frame, encode
from tests.conftest import require, wait_for

__all__ = ["FIRMWARE", "SHIM", "build_sketch", "SketchProcess"]

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware_bridge" / "firmware"
SHIM = ROOT / "tests" / "firmware_shim"
SANITIZE = ["-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
WARN = ["-Wall", "-Wextra", "-Werror"]


def build_sketch(out_dir: Path) -> Path:
    """Compile the sketch + C core + shim into ``out_dir/shelf_label``; CalledProcessError shows the compiler's words."""
    gcc, gxx = shutil.which("gcc"), shutil.which("g++")
    require(gcc is not None and gxx is not None, "gcc/g++ are not installed (scripts/test-deps.sh installs them)")
    assert gcc is not None and gxx is not None
    core = out_dir / "esp_protocol.o"
    exe = out_dir / "shelf_label"
    steps = [
        [gcc, "-std=c99", *WARN, *SANITIZE, "-c", str(FIRMWARE / "esp_protocol.c"), "-o", str(core)],
        # as the Arduino toolchain does: the .ino is C++ (gnu++11 on AVR) with <Arduino.h> included first
        [gxx, "-std=gnu++11", *WARN, *SANITIZE, "-I", str(SHIM), "-I", str(FIRMWARE), "-include", "Arduino.h",
         "-x", "c++", str(FIRMWARE / "shelf_label" / "shelf_label.ino"), "-x", "c++", str(SHIM / "shim_main.cpp"),
         "-x", "none", str(core), "-o", str(exe)],
    ]  # fmt: skip
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return exe


class SketchProcess:
    """The compiled sketch as a running device; every frame it sends is decoded into :attr:`frames`.

    Without ``fd`` it talks over pipes (this object writes to it with :meth:`send`). With ``fd`` (a pty
    master) its serial port is that pty: whoever opens the slave (the bridge) talks to it, and
    :attr:`frames` stays empty."""

    def __init__(self, exe: Path, *, fd: int | None = None, ms_per_loop: int = 50) -> None:
        env = {"SHIM_MS_PER_LOOP": str(ms_per_loop), "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
               "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1", "PATH": os.environ.get("PATH", "")}  # fmt: skip
        pipes = fd is None
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE if pipes else fd, stdout=subprocess.PIPE if pipes else fd,
            stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        self.decoder = Decoder()
        self.frames: list[Frame] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        if pipes:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while data := self.proc.stdout.read1(4096):
            got = self.decoder.feed(data)
            with self._lock:
                self.frames.extend(got)

    def snapshot(self) -> list[Frame]:
        with self._lock:
            return list(self.frames)

    def wait(self, pred: Callable[[Frame], bool], what: str, *, after: int = 0, timeout: float = 30.0) -> int:
        """Index in :attr:`frames` of the first frame at or after ``after`` that matches ``pred``."""

        def find() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"the sketch exited with {self.proc.returncode}: {self.stderr_text()}")
            for i, f in enumerate(self.snapshot()[after:], after):
                if pred(f):
                    return i + 1  # truthy even for index 0
            return None

        return int(wait_for(find, what, timeout)) - 1

    def send(self, message: object, seq: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode(message, seq))  # type: ignore[arg-type]
        self.proc.stdin.flush()

    def write_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def press(self) -> None:
        """The shelf's button: one press, seen by the next loop() after it read the serial input sent so far."""
        self.proc.send_signal(signal.SIGUSR1)

    def stderr_text(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def close(self, timeout: float = 20.0) -> int:
        """Close its serial input (pipes: it returns from main) or terminate it; its exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        else:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return rc
