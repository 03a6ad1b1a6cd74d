"""Waiting on work in tests without fixed time limits: a limit is there to catch a hang, not a busy machine.

Work counts as progressing while anything it shows changes: its output, a file under the watched paths (a run
directory, a log), or the CPU time of its process tree (a process importing torch or generating without
printing). Only when nothing changed for ``stall_s`` seconds (default :data:`STALL_S`, or
``$ALIGNMENT_TEST_STALL_S``) is it declared hung: the process group is killed and the test fails with the tail of
its output. A process spinning in a loop without output keeps its CPU time moving and is not caught; the waits
these tests guard against (locks, shards, collectives) use no CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

STALL_S = float(os.environ.get("ALIGNMENT_TEST_STALL_S", "600"))
POLL_S = 0.05  # how often a condition or an exit is checked
LOOK_S = 1.0  # how often the watched files and CPU time are looked at
TAIL_CHARS = 3000


def _newest_change(paths: Iterable[Path]) -> tuple[int, int]:
    """(newest mtime in ns, number of entries) below ``paths``: changes when a file is written, added or removed."""
    newest, count = 0, 0
    for root in paths:
        for directory, subdirs, files in os.walk(root) if root.is_dir() else [(str(root.parent), [], [root.name])]:
            for name in [*subdirs, *files]:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(directory, name)).st_mtime_ns)
                    count += 1
    return newest, count


def _cpu_seconds(pid: int | None) -> float:
    """CPU time of process ``pid`` and its descendants (0 without psutil or once it has exited)."""
    if pid is None:
        return 0.0
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


class Progress:
    """Tracks whether watched work changed recently; :meth:`stalled` is True after ``stall_s`` without change."""

    def __init__(self, watch: Sequence[str | Path] = (), pid: int | None = None, stall_s: float | None = None):
        self.paths = [Path(p) for p in watch]
        self.pid = pid
        self.stall_s = STALL_S if stall_s is None else stall_s
        self._last: Any = None
        self._changed_at = self._looked_at = time.monotonic()

    def stalled(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._looked_at < LOOK_S:
            return False
        state = (_newest_change(self.paths), _cpu_seconds(self.pid))
        self._looked_at = now
        if state != self._last:
            self._last, self._changed_at = state, now
        return now - self._changed_at > self.stall_s


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen[Any] | None = None,
               watch: Sequence[str | Path] = (), stall_s: float | None = None) -> None:
    """Return once ``condition()`` holds; fail when ``process`` ends first or nothing it shows changes for
    ``stall_s`` seconds."""
    progress = Progress(watch, process.pid if process is not None else None, stall_s)
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before {what}")
        if progress.stalled():
            raise AssertionError(f"no progress for {progress.stall_s:.0f}s while waiting for {what}")
        time.sleep(POLL_S)


def wait_for_exit(process: subprocess.Popen[Any], watch: Sequence[str | Path] = (),
                  stall_s: float | None = None) -> int:
    """``process.wait()``, killing its process group (started with ``start_new_session=True``) when it stalls."""
    progress = Progress(watch, process.pid, stall_s)
    while process.poll() is None:
        if progress.stalled():
            _kill_group(process)
            raise AssertionError(f"killed {process.args!r}: no progress for {progress.stall_s:.0f}s")
        time.sleep(POLL_S)
    return process.returncode


def _kill_group(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_watched(command: Sequence[str], watch: Sequence[str | Path] = (), stall_s: float | None = None,
                **popen: Any) -> subprocess.CompletedProcess[str]:
    """Like ``subprocess.run(command, capture_output=True, text=True)`` without a time limit: the process group is
    killed, and the test fails with the output's tail, only when the process stops making progress (its output,
    the files under ``watch`` and its CPU time all unchanged for ``stall_s`` seconds)."""
    with tempfile.TemporaryDirectory(prefix="watched-") as scratch:
        out_path, err_path = Path(scratch) / "stdout", Path(scratch) / "stderr"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            process = subprocess.Popen(list(command), stdout=out, stderr=err, text=True, start_new_session=True,
                                       **popen)
            try:
                wait_for_exit(process, [out_path, err_path, *map(Path, watch)], stall_s)
            except AssertionError as stalled:
                tail = out_path.read_text()[-TAIL_CHARS:] + err_path.read_text()[-TAIL_CHARS:]
                raise AssertionError(f"{stalled}\n{tail}") from None
            finally:
                if process.poll() is None:  # an interrupted test leaves nothing running
                    _kill_group(process)
        return subprocess.CompletedProcess(list(command), process.returncode, out_path.read_text(),
                                           err_path.read_text())
