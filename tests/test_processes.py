"""Starting and waiting for the servers the stack owns: failures name the log and leave nothing running."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from policies.processes import spawn, wait_until_ready


def test_a_server_that_exits_is_reported_with_its_code_and_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    process = spawn([sys.executable, "-c", "print('bad config'); raise SystemExit(3)"], log)
    assert wait_until_ready(process, lambda: False, "demo server", log) == f"demo server exited with code 3; see {log}"
    assert log.read_text() == "bad config\n"


def test_a_server_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    process = spawn([sys.executable, "-c", "import time; time.sleep(60)"], log)
    problem = wait_until_ready(process, lambda: False, "demo server", log, timeout=0.5)
    assert problem == f"demo server did not become ready within 0.5 s; see {log}"
    assert process.poll() is not None, "the hung server was stopped"


def test_a_ready_server_is_left_running(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    process = spawn([sys.executable, "-c", "import time; time.sleep(60)"], log)
    try:
        assert wait_until_ready(process, lambda: True, "demo server", log) is None
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_commands_count_into_the_last_stack_started(tmp_path: Path) -> None:
    """`sovereign registry promote` finds the /metrics directory of the newest running stack, not a dead one."""
    from policies.state import STARTED_MARKER, running_stack_metrics_dir

    assert running_stack_metrics_dir(tmp_path) is None
    dead, older, newer = (tmp_path / "metrics" / str(pid) for pid in (2**22 + 1, os.getppid(), os.getpid()))
    for number, directory in enumerate((older, newer, dead)):
        directory.mkdir(parents=True)
        (directory / STARTED_MARKER).touch()
        os.utime(directory / STARTED_MARKER, (1_000 + number, 1_000 + number))
    (older / "counter_1.db").touch()  # a stack's own writes do not make it the newest
    assert running_stack_metrics_dir(tmp_path) == newer
