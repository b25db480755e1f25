"""Bad state and bad disks around a run folder (issue 9): file-system faults, --resume
overrides, the run-folder lock, file permissions, messages, Ctrl-C."""

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import interruptible, write_image_folder
from zfjax import artifacts, progress
from zfjax.commands import train, visualize
from zfjax.inputs import data
from zfjax.train import checkpoints, trainer

ROOT = Path(__file__).resolve().parents[1]

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _args(folder, out, *extra):
    return ["--preset", "cpu", "--data", str(folder), "--size", "64", "--width", "0.25",
            "--batch", "4", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2 classes, 4 training and 2 validation images each, plus one broken file."""
    root = write_image_folder(tmp_path_factory.mktemp("images"), "ab", 4, shape=(40, 40))
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def finished(folder, tmp_path_factory):
    """A finished 3-epoch run (snapshots left out to save their compilation) and what
    train.py printed."""
    out = tmp_path_factory.mktemp("runs") / "done"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(train, "snapshot_hook", lambda: None)
        old = os.umask(0o022)
        try:
            assert train.main(_args(folder, out, "--epochs", "3")) == 0
        finally:
            os.umask(old)
    return out, printed.getvalue()


def _copy(run, to):
    shutil.copytree(run, to)
    return to


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, *options: str):
    """A tmpfs of `size` mounted at path (skips where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", *options))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _one_error_line(err: str, prefix="error: ") -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ item 3: disks

def test_out_under_a_file_is_one_line(folder, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train.main(_args(folder, tmp_path / "file" / "run")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot use {tmp_path / 'file' / 'run'} as the run folder" in line
    assert "pass another --out" in line


def test_unwritable_out_is_one_line(folder, tmp_path, capsys):
    if os.geteuid() == 0:
        ctx = _tmpfs(tmp_path / "ro", "1m", "ro")
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        ctx = contextlib.nullcontext(tmp_path / "ro")
    with ctx as ro:
        assert train.main(_args(folder, ro / "run")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot use {ro / 'run'} as the run folder: " in line
    assert "Read-only file system" in line or "Permission denied" in line


def test_full_disk_at_a_checkpoint_keeps_the_last_good_one(folder, tmp_path, capfd):
    """A 16 MB disk holds the first checkpoint (about 11 MB) but not the second."""
    with _tmpfs(tmp_path / "disk", "16m") as disk, pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "snapshot_hook", lambda: None)
        assert train.main(_args(folder, disk / "run", "--epochs", "2")) == 1
        line = _one_error_line(capfd.readouterr().err)
        assert "not enough free space in" in line and "for checkpoint 2" in line
        assert f"the last good checkpoint is {disk / 'run' / 'checkpoints' / '1'}" in line
        params, _, _, record = checkpoints.load_run(disk / "run")
        assert record.epoch == 1


def test_a_write_that_fails_on_a_full_disk_names_the_last_good_checkpoint(tmp_path, capfd,
                                                                          monkeypatch):
    """Past the free-space check (disk_usage lies), orbax's own ENOSPC failure."""
    import threading

    from test_checkpoints import _abstract, _state

    monkeypatch.setattr(sys, "stderr", sys.stderr)  # the failure wraps it; put back after
    state = _state()  # 5 MB on disk (its zero momentum compresses)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage",
                        lambda _: shutil._ntuple_diskusage(1 << 40, 0, 1 << 40))
    with _tmpfs(tmp_path / "disk", "8m") as disk:
        mgr = checkpoints.manager(disk / "checkpoints")
        checkpoints.save(mgr, 1, state, {"epoch": 1})
        with pytest.raises(checkpoints.CheckpointError) as err:
            checkpoints.save(mgr, 2, state, {"epoch": 2})
        mgr.close()
        assert (f"writing checkpoint 2 into {disk / 'checkpoints'} failed: the disk is full; "
                f"the last good checkpoint is {disk / 'checkpoints' / '1'}") in str(err.value)
        assert "Traceback" not in capfd.readouterr().err  # orbax's thread logs kept quiet
        # TensorStore finishes the abandoned writes later, on its own threads, printing
        # "Event loop is closed" tracebacks (3 runs in 10 of a script did): kept off too.
        late = threading.Thread(target=lambda: print("Traceback (abandoned write)",
                                                     file=sys.stderr))
        late.start()
        late.join()
        assert "Traceback" not in capfd.readouterr().err
        mgr = checkpoints.manager(disk / "checkpoints", read_only=True)
        assert mgr.all_steps() == [1]
        restored, _ = checkpoints.restore(mgr, 1, _abstract(state))
        np.testing.assert_array_equal(restored.params["conv1"]["kernel"],
                                      state.params["conv1"]["kernel"])
        mgr.close()


def test_disk_errors_during_an_epoch_are_one_line(folder, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "r" / ".curves.png.x.tmp"))

    monkeypatch.setattr(trainer, "_fit", full)
    assert train.main(_args(folder, tmp_path / "r")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"error: cannot write in {tmp_path / 'r'}: No space left on device; no "
                    f"checkpoint was written yet; fix that and continue with --resume")


def _truncate_biggest(checkpoint: Path) -> None:
    biggest = max((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_truncated_checkpoint_is_one_line_and_the_others_stay_usable(finished, tmp_path):
    run = _copy(finished[0], tmp_path / "run")
    _truncate_biggest(run / "checkpoints" / "3")
    shown = subprocess.run([sys.executable, str(ROOT / "visualize.py"), "topk", str(run),
                            "--limit", "2"], env=ENV, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 2 and shown.stdout == ""
    line = _one_error_line(shown.stderr, "visualize.py topk: error: ")
    assert (f"checkpoint {run / 'checkpoints' / '3'} cannot be read, it is damaged or "
            f"truncated") in line
    assert f"load another with {run / 'checkpoints' / '2'} (epochs 1, 2 exist)" in line
    assert checkpoints.load_run(run / "checkpoints" / "2").record.epoch == 2

    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(run),
                              "--resume", "--epochs", "4", "--no-progress"], env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1
    line = _one_error_line(resumed.stderr[resumed.stderr.find("error: "):])
    assert f"move {run / 'checkpoints' / '3'} aside and --resume" in line


def test_visualize_checks_its_output_folder_before_computing(finished, tmp_path, monkeypatch,
                                                            capsys):
    from zfjax import cli

    monkeypatch.setattr(cli, "load_model", lambda *a: pytest.fail("computed before checking"))
    (tmp_path / "file").write_text("x")
    code = visualize.main(["topk", str(finished[0]), "--out", str(tmp_path / "file" / "o")])
    assert code == 2
    assert capsys.readouterr().err == (f"visualize.py topk: error: --out {tmp_path}/file/o: "
                                       f"cannot make folder {tmp_path}/file/o: {tmp_path}/file "
                                       f"is a file\n")


# ------------------------------------------- issue 15 item 3: never overwrite a user's folder

@pytest.mark.parametrize("files", [
    {"notes.txt": "mine"},
    {"config.json": '{"model": "mine", "lr": 3}', "metrics.jsonl": "mine\n", "mean.npy": "x"},
])
def test_out_that_holds_files_but_is_not_a_run_is_refused_untouched(folder, tmp_path, capsys,
                                                                    files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert train.main(_args(folder, tmp_path)) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"error: --out {tmp_path} is a folder that holds files and is not a zfjax "
                    f"run (it has no config.json written by train.py); pick a new or empty "
                    f"folder, or pass --resume with the --out of a run to continue it")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == files  # no .lock either


def test_a_run_folder_is_recognised_by_what_train_py_wrote(finished, tmp_path):
    assert checkpoints.is_run_folder(finished[0])
    assert json.loads((finished[0] / "config.json").read_text())["format"] == "zfjax run"
    (tmp_path / "config.json").write_text('{"model": {}, "train": {}, "data": {}}')
    assert checkpoints.is_run_folder(tmp_path)  # a run from before the "format" mark
    (tmp_path / "config.json").write_text('{"model": {}}')
    assert not checkpoints.is_run_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".lock").write_text("")  # a stale lock of a run killed at once
    checkpoints.check_new_run_folder(empty)


# ------------------------------------------------------------- item 4: --resume

def test_resume_of_a_finished_run_has_nothing_to_do_and_changes_nothing(finished, tmp_path,
                                                                        capsys):
    run = _copy(finished[0], tmp_path / "run")
    files = lambda: {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    before = files()
    assert train.main(["--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "already has 3 epochs" in out and "done:" not in out
    assert files() == before


@pytest.mark.parametrize("flag, value, setting", [
    ("--size", "96", "image_size 64"), ("--width", "0.5", "width 0.25"),
    ("--batch", "8", "batch_size 4"), ("--data", "/elsewhere", "data "),
])
def test_resume_refuses_settings_it_cannot_change(finished, flag, value, setting, capsys):
    run = finished[0]
    before = (run / "config.json").read_bytes()
    assert train.main(["--out", str(run), "--resume", flag, value, "--epochs", "5"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {flag} {value} differs from the run's {setting}")
    assert "--resume can only change the learning rate (--lr)" in line
    assert (run / "config.json").read_bytes() == before


@pytest.mark.parametrize("flags, start", [
    (["--variant", "fc-2048"], "--variant fc-2048 differs from the run's variant 'zfnet'"),
    (["--no-renorm"], "--no-renorm differs from the run's filter_radius 0.1"),
    (["--preset", "demo", "--data", "x"], "--data x differs from the run's data "),
    (["--preset", "demo"], "--preset demo (its image_size 112) differs from the run's "
                           "image_size 64"),
    (["--preset", "cpu", "--size", "64"], "--preset cpu (its width 0.5) differs from the run's "
                                          "width 0.25"),
])
def test_resume_refuses_variant_renorm_and_preset_that_differ(finished, flags, start, capsys):
    """Issue 15 item 8: one rule for every flag given explicitly, --preset included."""
    run = finished[0]
    before = (run / "config.json").read_bytes()
    assert train.main(["--out", str(run), "--resume", *flags, "--epochs", "5"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {start}"), line
    assert line.endswith(f"start a new run (another --out) to change {start.split()[0]}")
    assert (run / "config.json").read_bytes() == before


def test_resume_compares_only_what_the_command_line_gives():
    stored = train.build_run(train.parse_args(["--preset", "cpu", "--width", "0.25"]))
    resume = lambda *flags: train.resume_refusal(train.parse_args(["--resume", *flags]), stored)
    assert resume("--lr", "0.1", "--epochs", "3") is None
    assert resume("--preset", "cpu", "--width", "0.25") is None
    assert resume("--width", "0.25", "--seed", "0", "--variant", "zfnet") is None
    assert resume("--preset", "cpu").startswith("--preset cpu (its width 0.5) differs")
    assert resume("--preset", "cpu", "--seed", "3").startswith("--seed 3 differs")  # flags first


def test_resume_applies_and_records_a_new_learning_rate_and_epochs(finished, folder, tmp_path):
    run = _copy(finished[0], tmp_path / "run")
    # The run's own command repeated (same --size, --data, ...) is accepted.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "snapshot_hook", lambda: None)
        assert train.main(_args(folder, run, "--resume", "--epochs", "4", "--lr", "0.00123")) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[3]["learning_rate"] == pytest.approx(0.00123)
    assert metrics[2]["learning_rate"] != pytest.approx(0.00123)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 4
    assert config["resumes"] == [{"after_epoch": 3, "epochs": 4, "learning_rate": 0.00123}]


@pytest.mark.parametrize("drop, says", [
    (("data",), "has no 'data' section"), (("data", "source"), "has no data source"),
    (("train",), "has no 'train' section"),
])
def test_resume_of_a_config_with_missing_keys_is_one_line(finished, tmp_path, drop, says,
                                                          capsys):
    """Issue 15 item 16 (a KeyError traceback before)."""
    run = _copy(finished[0], tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    section = config
    for key in drop[:-1]:
        section = section[key]
    del section[drop[-1]]
    (run / "config.json").write_text(json.dumps(config))
    assert train.main(["--out", str(run), "--resume", "--epochs", "5"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {run / 'config.json'} {says}")


def test_cluster_flags_without_distributed_are_refused(capsys):
    assert train.main(["--coordinator", "host0:1234", "--process-id", "1"]) == 2
    assert capsys.readouterr().err == (
        "error: --coordinator, --process-id only work with --distributed; add --distributed "
        "for a run over several processes, or leave them out\n")


def test_distributed_says_what_it_waits_for_and_bad_flags_are_one_line(monkeypatch, capsys):
    import jax

    def no_cluster(*args):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    assert train.main(["--distributed", "--num-processes", "4", "--coordinator", "h:1"]) == 2
    out, err = capsys.readouterr()
    assert out == "waiting for 4 processes at h:1 (jax.distributed.initialize)\n"
    assert _one_error_line(err).startswith(
        "error: --distributed: coordinator_address should be defined. (JAX found no cluster")
    assert train.main(["--distributed", "--num-processes", "2", "--process-id", "2"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "error: --process-id 2 is not below --num-processes 2; the processes are numbered 0 to 1")


def test_distributed_without_a_cluster_is_one_line():
    """A subprocess (about 3 s): jax.distributed.initialize must be the first JAX call."""
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--distributed"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ("waiting for every process of the cluster at the coordinator the "
                           "cluster names (jax.distributed.initialize)\n")
    assert _one_error_line(done.stderr).startswith("error: --distributed: ")


# --------------------------------------------------------------- item 7: the lock

HOLDER = textwrap.dedent("""
    import sys, time
    from zfjax.train import checkpoints
    with checkpoints.lock_run_folder(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_second_train_on_the_same_out_fails_at_once_naming_the_holder(folder, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        assert train.main(_args(folder, run)) == 1
        assert time.monotonic() - start < 5  # at once: no data loaded, nothing compiled
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: run folder {run} is in use by pid {holder.pid} on host "
                               f"{socket.gethostname()}")
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    assert (run / ".lock").exists()  # a stale lock file, which must not block
    with checkpoints.lock_run_folder(run):
        pass
    assert train.main(["--out", str(run), "--resume"]) == 1  # not "in use": no config yet
    assert "config.json not found" in capsys.readouterr().err


def test_a_refused_lock_ends_every_process_of_a_multi_host_run_with_one_line(folder, tmp_path):
    run = tmp_path / "run"
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    with checkpoints.lock_run_folder(run):
        start = time.monotonic()
        processes = [subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *_args(folder, run), "--distributed",
             "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id",
             str(i)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
        errors = [p.communicate(timeout=120)[1] for p in processes]
        # before the fix, process 1 went on alone and failed in its first collective
        # 30 s later (the coordination service's deadline), with a traceback
        assert time.monotonic() - start < 25
    assert [p.returncode for p in processes] == [1, 1]
    mine = f"pid {os.getpid()} on host {socket.gethostname()}"
    own = lambda err: [line for line in err.splitlines() if line.startswith("error: ")
                       or "Traceback" in line]  # JAX's distributed runtime logs too
    assert [line.split(" (since")[0] for line in own(errors[0])] == [
        f"error: run folder {run} is in use by {mine}"]
    assert own(errors[1]) == [
        f"error: process 0 could not use the run folder {run}; its message says why"]


# ------------------------------------------------------------ item 8: the umask

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old = os.umask(umask)
    try:
        artifacts.write_json(tmp_path / "config.json", {"a": 1})
        checkpoints.save_mean(tmp_path, np.zeros((2, 2, 3), np.float32))
        artifacts.save_npz(tmp_path / "x.npz", a=np.zeros(2))
        artifacts.save_png(plt.figure(), tmp_path / "x.png")
    finally:
        os.umask(old)
    for name in ("config.json", "mean.npy", "x.npz", "x.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_run_is_readable_by_others_under_umask_022(finished):
    run = finished[0]
    for name in ("config.json", "mean.npy", "metrics.jsonl", "curves.png"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


# ---------------------------------------------------------------- item 9: messages

def test_config_without_model_or_with_bad_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"train": {}}')
    with pytest.raises(ValueError, match=f"{tmp_path}/config.json has no 'model' section"):
        checkpoints.load_run(tmp_path)
    (tmp_path / "config.json").write_text('{"model": ')
    with pytest.raises(ValueError, match=f"{tmp_path}/config.json is not valid JSON"):
        checkpoints.load_run(tmp_path)


def test_images_naming_a_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match=f"image {tmp_path} is a folder, not an image file"):
        data.load_image_files([tmp_path], 64)


def test_unprepared_tfds_suggests_data_for_an_image_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_split("imagenette/160px-v2", "train", 64, data_dir=str(tmp_path),
                        progress=False)
    assert "(--data /path/to/folder)" in str(err.value) and "--data-dir /path" not in str(err.value)


def test_banner_shows_the_real_class_count_and_config_records_skipped_files(finished):
    run, printed = finished
    banner = json.loads(printed.splitlines()[1])
    assert banner["model"]["num_classes"] == 2  # the folder's, not the preset's 10
    config = json.loads((run / "config.json").read_text())
    assert (config["data"]["train_skipped"], config["data"]["val_skipped"]) == (1, 0)


def test_read_only_loads_print_no_absl_warning(finished, caplog):
    with caplog.at_level(logging.INFO):
        checkpoints.load_run(finished[0])
    assert "read only" not in caplog.text


def test_progress_in_a_log_is_sparse_whole_lines(folder, monkeypatch):
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    data.load_split(str(folder), "train", 64, progress=True)
    with progress.bar(total=5000, desc="epoch 1/1", unit="step") as bar:
        for i in range(5000):
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}")  # as the epoch bar does every step
            bar.update()
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue() and lines[-1] == ""
    assert len(lines) - 1 <= 5, lines  # a few whole lines, not one per step
    assert "5000/5000" in lines[-2] and any("9/9" in line for line in lines)


# ------------------------------------------------------------------ item 10: Ctrl-C

QUIET_TRAIN = textwrap.dedent("""
    import sys
    from zfjax.commands import train
    train.snapshot_hook = lambda: None
    if __name__ == "__main__":
        sys.exit(train.main(sys.argv[1:]))
""")


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
@pytest.mark.parametrize("feed", ["memory", "streamed"])
def test_ctrl_c_says_where_the_last_checkpoint_is_and_how_to_resume(folder, tmp_path, feed):
    # Streamed: Grain worker processes get the terminal's SIGINT too and must stay quiet.
    run = tmp_path / "run"
    script = tmp_path / "quiet_train.py"  # a file: spawned processes import __main__
    script.write_text(QUIET_TRAIN)
    streamed = (["--memory-budget", "0.000001", "--store", str(tmp_path / "store"),
                 "--workers", "1"] if feed == "streamed" else [])
    job = subprocess.Popen(interruptible([str(script), *_args(folder, run, "--epochs", "100000",
                                                               *streamed)]),
                           env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "1").exists() and job.poll() is None:
        assert time.time() < deadline
        time.sleep(0.1)
    time.sleep(1)  # into the next epoch (Grain starts its workers at an epoch's start)
    os.killpg(job.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
    try:  # seconds; CI once saw it train on, the KeyboardInterrupt dropped in a finalizer
        out, err = job.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f"train.py still running 300 s after Ctrl-C:\n{job.communicate()[1][-3000:]}")
    assert job.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = max(checkpoints.finished_epochs(run))
    assert (f"interrupted; the last checkpoint (epoch {last}) is "
            f"{run / 'checkpoints' / str(last)}; continue with: python train.py --out {run} "
            f"--resume") in err
    assert checkpoints.load_run(run).record.epoch == last


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_ctrl_c_while_compiling_is_one_line_and_exit_130(folder, tmp_path):
    """Issue 15 item 15: Ctrl-C about 2 s after the data is loaded lands while XLA is
    compiling (the probe, the initial state, the first step); train.py printed the hint
    and then died of SIGSEGV in the interpreter's teardown (3 runs in 3 before the fix).
    A subprocess of train.py itself (its __main__ leaves the process), about 15 s."""
    run = tmp_path / "run"
    # Without the suite's compilation cache (conftest.py): this run must compile.
    env = {k: v for k, v in ENV.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    job = subprocess.Popen(interruptible([str(ROOT / "train.py"), *_args(folder, run,
                                                                           "--epochs", "3")]),
                           env={**env, "PYTHONFAULTHANDLER": "1"}, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    line = ""
    while "input:" not in line and job.poll() is None:
        line = job.stdout.readline()
    time.sleep(2)
    os.killpg(job.pid, signal.SIGINT)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-3000:]
    assert err.splitlines()[-1] == (f"interrupted; no checkpoint was written yet; continue "
                                    f"with: python train.py --out {run} --resume")
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written


def test_an_unreadable_curves_png_is_named_where_it_is(tmp_path, capsys):
    """Issue 15 item 20: the atlas reported it under its temporary copy's path."""
    from helpers import write_tiny_run

    run = write_tiny_run(tmp_path)
    (run / "curves.png").write_bytes(b"not a png")
    code = visualize.main(["atlas", str(run), "--out", str(tmp_path / "site"), "--layers",
                           "conv1", "--limit", "2"])
    err = capsys.readouterr().err
    assert code != 0 and f"{run / 'curves.png'}" in err and ".tmp" not in err, err
    assert not (tmp_path / "site").exists()
