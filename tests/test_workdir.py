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


def test_release_removes_only_its_own_lock(tmp_path):
    lock = WorkdirLock(str(tmp_path)).acquire()
    # Somebody deleted our lock by hand and another run took the workdir meanwhile.
    theirs = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
              "token": "theirs"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(theirs))
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == theirs


def _contender(workdir, barrier, results, trials):
    for trial in range(trials):
        barrier.wait()
        lock = WorkdirLock(workdir)
        try:
            lock.acquire()
        except ValueError:
            pass
        results.put((trial, lock.held))
        barrier.wait()  # everyone has tried before the holder lets go
        lock.release()
        barrier.wait()


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_processes_that_acquire_at_the_same_instant_get_exactly_one_holder(tmp_path, processes):
    import multiprocessing

    trials = 200
    context = multiprocessing.get_context("fork")  # the children run no TensorFlow
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_contender,
                               args=(str(tmp_path), barrier, results, trials))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    holders = [0] * trials
    for _ in range(trials * processes):
        # (A queue's feeder thread may deliver one trial's answer after the next trial's.)
        trial, held = results.get(timeout=120)
        holders[trial] += held
    for worker in workers:
        worker.join(timeout=120)
    assert holders == [1] * trials
    assert not (tmp_path / LOCK_FILE).exists()
