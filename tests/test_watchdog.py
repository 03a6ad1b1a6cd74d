"""The test watchdog kills work that stopped making progress, and only that: slow work that keeps showing change
runs to its end however long it takes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.watchdog import run_watched, wait_for_exit, wait_until

PYTHON = sys.executable


def test_a_silent_idle_process_is_killed_and_the_test_fails_with_its_output() -> None:
    script = "import time; print('started', flush=True); time.sleep(600)"
    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"no progress for 1s(.|\n)*started"):
        run_watched([PYTHON, "-c", script], stall_s=1.0)
    assert time.monotonic() - began < 300  # killed long before its sleep ends


def test_a_process_that_keeps_writing_a_watched_file_outlives_the_stall_period(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    # quiet on stdout and asleep most of the time, but touching a watched file: 2.5 stall periods in all
    script = f"import time, pathlib\nfor i in range(25):\n    pathlib.Path({str(beat)!r}).write_text(str(i))\n" \
             "    time.sleep(0.2)\nprint('done')"
    result = run_watched([PYTHON, "-c", script], watch=[tmp_path], stall_s=2.0)
    assert result.returncode == 0 and result.stdout == "done\n"


def test_wait_until_fails_when_the_process_ends_first_and_wait_for_exit_returns_its_code() -> None:
    process = subprocess.Popen([PYTHON, "-c", "raise SystemExit(3)"], start_new_session=True)
    with pytest.raises(AssertionError, match=r"ended \(exit 3\) before the marker"):
        wait_until(lambda: False, "the marker", process)
    assert wait_for_exit(process) == 3


def test_wait_until_kills_nothing_it_did_not_start_and_fails_on_a_stall(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="no progress for 1s while waiting for a file"):
        wait_until((tmp_path / "never").exists, "a file", watch=[tmp_path], stall_s=1.0)
