"""The run folder's lock: one run at a time, stale locks taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from retinanet.training.workdir import LOCK_FILE, WorkdirLock


def test_a_second_lock_on_the_same_workdir_names_the_holder(tmp_path):
    with WorkdirLock(str(tmp_path)):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {os.getpid()} "):
            WorkdirLock(str(tmp_path)).acquire()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"pid": dead_pid, "host": socket.gethostname(), "started": "then"}))
    with WorkdirLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_an_unreadable_lock_file_is_stale(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")  # a run killed between create and write
    with WorkdirLock(str(tmp_path)):
        pass


def test_a_lock_on_another_host_is_respected(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(ValueError, match="on elsewhere"):
        WorkdirLock(str(tmp_path)).acquire()


def test_a_workdir_the_lock_created_goes_away_if_nothing_was_written(tmp_path):
    with WorkdirLock(str(tmp_path / "new")):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    with WorkdirLock(str(tmp_path / "kept")):
        (tmp_path / "kept" / "config.json").write_text("{}")
    assert (tmp_path / "kept" / "config.json").is_file()
