import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from limit import methods, registry, runtime
from limit.train import TrainingError, train

TIMING = ["epoch_seconds", "images_per_second"]


def config(fmnist_dir, labels, **kw):
    return {"dataset": "fashion_mnist", "data_dir": str(fmnist_dir), "labels": str(labels), "method": "ce",
            "epochs": 3, "patience": 100, "batch_size": 128, "seed": 7, **kw}


def outputs(run_dir):
    history = pd.read_csv(run_dir / "history.csv").drop(columns=TIMING)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("wall_seconds")
    return history, metrics, np.load(run_dir / "test_outputs.npz")["logits"]


def assert_same_outputs(a, b):
    pd.testing.assert_frame_equal(a[0], b[0])
    assert a[1] == b[1]
    assert np.array_equal(a[2], b[2])


def train_cmd(fmnist_dir, labels, out, *extra):
    return [sys.executable, "-m", "limit", "train", "--dataset", "fashion_mnist", "--data-dir", str(fmnist_dir),
            "--labels", str(labels), "--batch-size", "64", "--seed", "3", "--out", str(out), "--no-tracking", *extra]


def test_short_real_run_learns(fmnist_dir, make_labels, tmp_path):
    metrics = train(config(fmnist_dir, make_labels(rate=0.0, n=512), epochs=4), tmp_path / "run")
    assert metrics["test_acc"] > 0.55  # chance is 0.10
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history.epoch) == [0, 1, 2, 3]
    assert history.train_acc.iloc[-1] > history.train_acc.iloc[0]


def test_same_config_and_seed_give_the_same_numbers(fmnist_dir, make_labels, tmp_path):
    labels = make_labels(rate=0.5)
    cfg = config(fmnist_dir, labels, method="limit_l_s", hparams={"beta": 1.0, "lamb": 10.0}, epochs=2)
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    assert_same_outputs(outputs(tmp_path / "a"), outputs(tmp_path / "b"))
    scores = np.load(tmp_path / "a" / "train_scores.npz")
    assert len(scores["mu_norm"]) == 512 and scores["is_corrupted"].mean() > 0.3
    # loss and margin averaged over the epochs up to the selected one, for training and validation examples
    best_epoch = json.loads((tmp_path / "a" / "metrics.json").read_text())["best_epoch"]
    with np.load(tmp_path / "a" / "epoch_scores.npz") as averaged:
        assert int(averaged["epochs"]) == best_epoch + 1
        assert averaged["train_loss"].shape == (512,) and averaged["val_loss"].shape == (512,)
        assert (averaged["train_loss"] > 0).all() and (np.abs(averaged["val_margin"]) <= 1).all()
    train({**cfg, "seed": 8}, tmp_path / "c")
    assert not np.array_equal(outputs(tmp_path / "a")[2], outputs(tmp_path / "c")[2])


@pytest.mark.pipeline
def test_kill_9_and_resume_equals_an_uninterrupted_run(fmnist_dir, make_labels, tmp_path):
    labels = make_labels(rate=0.5)
    extra = ["--method", "limit_g_s", "--beta", "1", "--lamb", "50", "--epochs", "6"]
    subprocess.run(train_cmd(fmnist_dir, labels, tmp_path / "whole", *extra), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(fmnist_dir, labels, killed, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        state = killed / "state.pt"
        if state.exists() and len(torch.load(state, weights_only=True)["history"]) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    epochs_done = len(torch.load(killed / "state.pt", weights_only=True)["history"])
    assert 2 <= epochs_done < 6
    result = subprocess.run(train_cmd(fmnist_dir, labels, killed, *extra), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"epoch {epochs_done}:" in result.stdout and "epoch 0:" not in result.stdout  # continued, not restarted
    assert_same_outputs(outputs(tmp_path / "whole"), outputs(killed))
    # the per-example sums behind the epoch-averaged scores survive the kill too
    with np.load(tmp_path / "whole" / "epoch_scores.npz") as whole, np.load(killed / "epoch_scores.npz") as resumed:
        assert set(whole) == {"epochs", "train_loss", "train_margin", "val_loss", "val_margin"}
        for key in whole:
            np.testing.assert_array_equal(whole[key], resumed[key])
    # finished: the training state is gone (storage), job.json records both attempts
    assert not (killed / "state.pt").exists() and not (killed / "state.prev.pt").exists()
    job = json.loads((killed / "job.json").read_text())
    assert len(job["attempts"]) == 2 and job["device"] == "cpu" and "device_change" not in job


def test_a_run_writes_each_checkpoint_once_and_no_training_state_it_would_remove(fmnist_dir, make_labels, tmp_path,
                                                                               monkeypatch):
    """Its last epoch's state.pt only with keep_state (otherwise the finished run removes it at once), best.pt once
    per better epoch (finish does not write it again), and a resumed run's best.pt rewritten by finish."""
    written = []
    save_torch = runtime.save_torch
    monkeypatch.setattr(runtime, "save_torch", lambda path, obj: (written.append(path.name), save_torch(path, obj)))
    scripted = iter([0.2, 0.9, 0.5])  # the best epoch: 1 of 3
    monkeypatch.setattr("limit.train.validation_accuracy", lambda *args: next(scripted))
    labels = make_labels(n=256, val_size=256)
    train(config(fmnist_dir, labels, checkpoint_every="1000min"), tmp_path / "run")
    assert written == ["best.pt", "best.pt"]
    written.clear()
    scripted = iter([0.2, 0.9, 0.5])
    train(config(fmnist_dir, labels, checkpoint_every="1000min", keep_state=True), tmp_path / "kept")
    assert written == ["best.pt", "best.pt", ".state.pt.new"]
    written.clear()
    scripted = iter([0.5])  # resumed after its 2 epochs, with a lower validation accuracy than its best
    train(config(fmnist_dir, labels, checkpoint_every="1000min", keep_state=True, epochs=4), tmp_path / "kept")
    assert written == [".state.pt.new", "best.pt"]


def test_keep_state_keeps_the_training_state_of_a_finished_run(fmnist_dir, make_labels, tmp_path):
    train(config(fmnist_dir, make_labels(rate=0.5), epochs=2, keep_state=True), tmp_path / "run")
    assert len(torch.load(tmp_path / "run" / "state.pt", weights_only=True)["history"]) == 2
    assert (tmp_path / "run" / "state.prev.pt").exists()


def test_resume_after_early_stop_and_rerun_of_a_complete_run(fmnist_dir, make_labels, tmp_path):
    cfg = config(fmnist_dir, make_labels(rate=0.8), epochs=30, patience=1)
    first = train(cfg, tmp_path / "run")
    assert first["epochs_run"] < 30 and first["epochs_run"] - 1 - first["best_epoch"] == 1
    again = train(cfg, tmp_path / "run")  # nothing left to train: same outputs
    assert {k: v for k, v in again.items() if k != "wall_seconds"} == \
        {k: v for k, v in first.items() if k != "wall_seconds"}


def test_mismatched_or_corrupt_checkpoint_is_refused(fmnist_dir, make_labels, tmp_path):
    labels = make_labels(rate=0.5)
    train(config(fmnist_dir, labels, epochs=1, keep_state=True), tmp_path / "run")
    with pytest.raises(TrainingError, match="different config"):
        train(config(fmnist_dir, labels, epochs=1, hparams={"lr": 0.01}), tmp_path / "run")
    with pytest.raises(TrainingError, match="different config"):
        train(config(fmnist_dir, make_labels(rate=0.8), epochs=1), tmp_path / "run")
    state = tmp_path / "run" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(TrainingError, match="corrupt"):  # a longer budget resumes from it
        train(config(fmnist_dir, labels, epochs=2), tmp_path / "run")


def test_checkpoints_load_as_data_only(fmnist_dir, make_labels, tmp_path):
    train(config(fmnist_dir, make_labels(rate=0.5), epochs=1), tmp_path / "run")

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))
    torch.save({"history": Payload()}, tmp_path / "run" / "state.pt")
    (tmp_path / "run" / "metrics.json").unlink()  # an unfinished run: started again, it reads its state
    with pytest.raises(TrainingError, match="corrupt or not a checkpoint"):
        train(config(fmnist_dir, make_labels(rate=0.5), epochs=1), tmp_path / "run")


def test_non_finite_loss_stops_with_the_epoch_and_term(fmnist_dir, make_labels, tmp_path, monkeypatch):
    def exploding(ctx, x, y, hp):
        logits = ctx.classifier(x)
        q_loss = logits.sum() * float("inf")
        return logits.sum() * 0, logits, {"loss": logits.sum() * 0, "q_loss": q_loss}
    monkeypatch.setitem(registry.METHODS, "exploding", registry.Method())
    monkeypatch.setitem(methods.LOSSES, "exploding", exploding)
    with pytest.raises(TrainingError, match=r"epoch 0: q_loss became (-)?inf"):
        train(config(fmnist_dir, make_labels(rate=0.5), method="exploding"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("method,extra", [("fw", {}), ("dmi", {"hparams": {"lr": 1e-4}}),
                                          ("limit_l_init", {"hparams": {"beta": 1.0}})])
def test_methods_that_start_from_the_ce_run(fmnist_dir, make_labels, tmp_path, method, extra):
    labels = make_labels(rate=0.5)
    train(config(fmnist_dir, labels, epochs=2), tmp_path / "ce")
    metrics = train(config(fmnist_dir, labels, method=method, epochs=2, init_from=str(tmp_path / "ce"),
                           keep_state=True, **extra), tmp_path / method)
    assert metrics["test_acc"] > 0.3
    if method == "fw":
        matrix = torch.load(tmp_path / "fw" / "state.pt", weights_only=True)["extra"]["transition_matrix"]
        assert torch.allclose(matrix.sum(1), torch.ones(10)) and (matrix.diagonal() > 0.1).all()
    with pytest.raises(ValueError, match="init_from"):
        train(config(fmnist_dir, labels, method=method), tmp_path / "x")


def test_a_method_behaves_as_its_registry_entry_says_whatever_its_name(fmnist_dir, make_labels, tmp_path,
                                                                        monkeypatch):
    """FW's transition matrix, DMI's warning and LIMIT's label scores come from registry fields, not from names:
    FW, DMI and LIMIT_L+init registered again under other names do what they do."""
    labels = make_labels(rate=0.5, n=256, val_size=256)
    fast = {"epochs": 1, "test_curve": False, "batch_size": 16, "keep_state": True}  # batches of 16 miss a class
    train(config(fmnist_dir, labels, **fast), tmp_path / "ce")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for name in ("fw", "dmi", "limit_l_init"):
            monkeypatch.setitem(registry.METHODS, f"{name}_again", registry.METHODS[name])
            monkeypatch.setitem(methods.LOSSES, f"{name}_again", methods.LOSSES[name])
            train(config(fmnist_dir, labels, method=f"{name}_again", init_from=str(tmp_path / "ce"), **fast),
                  tmp_path / name)
    assert "transition_matrix" in torch.load(tmp_path / "fw" / "state.pt", weights_only=True)["extra"]
    assert [str(w.message).split(":")[0] for w in seen if "miss a class" in str(w.message)] == ["DMI_AGAIN"]
    assert (tmp_path / "limit_l_init" / "train_scores.npz").exists()


def test_torn_state_resumes_from_the_previous_one_with_the_same_final_numbers(fmnist_dir, make_labels, tmp_path):
    cfg = config(fmnist_dir, make_labels(rate=0.5), method="limit_g_s", hparams={"beta": 1.0, "lamb": 50.0},
                 test_curve=False)
    train(cfg, tmp_path / "whole")
    train({**cfg, "epochs": 2, "keep_state": True}, tmp_path / "torn")  # a run stopped after its second epoch...
    state = tmp_path / "torn" / "state.pt"
    assert len(torch.load(tmp_path / "torn" / "state.prev.pt", weights_only=True)["history"]) == 1
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # ...whose last checkpoint is torn
    with pytest.warns(RuntimeWarning, match="resuming from .*state.prev.pt"):
        train(cfg, tmp_path / "torn")
    assert_same_outputs(outputs(tmp_path / "whole"), outputs(tmp_path / "torn"))


def test_a_run_stopped_while_writing_its_state_keeps_the_last_one(tmp_path, monkeypatch):
    """Ctrl-C (or kill -9) while state.pt is written, the slow part of a checkpoint: state.pt stays the last complete
    one, so the run resumes from it, not from the one before."""
    runtime.save_state(tmp_path, {"history": [0]})
    runtime.save_state(tmp_path, {"history": [0, 1]})

    def stopped(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        runtime.save_state(tmp_path, {"history": [0, 1, 2]})
    state, path, error = runtime.load_state(tmp_path)
    assert (state["history"], path.name, error) == ([0, 1], "state.pt", None)
    assert torch.load(tmp_path / "state.prev.pt", weights_only=True)["history"] == [0]

def test_a_changed_ce_model_restarts_the_runs_initialised_from_it(fmnist_dir, make_labels, tmp_path):
    labels, fast = make_labels(rate=0.5), {"epochs": 2, "test_curve": False}
    fw = config(fmnist_dir, labels, method="fw", init_from=str(tmp_path / "ce"), keep_state=True, **fast)
    train(config(fmnist_dir, labels, **fast), tmp_path / "ce")
    train(fw, tmp_path / "fw")
    train(config(fmnist_dir, labels, seed=8, **fast), tmp_path / "ce_new")  # the CE model changes
    (tmp_path / "ce" / "best.pt").write_bytes((tmp_path / "ce_new" / "best.pt").read_bytes())
    with pytest.warns(RuntimeWarning, match="CE model .* changed"):
        train(fw, tmp_path / "fw")  # the same command again: its state.pt is stale
    train(fw, tmp_path / "fw_fresh")
    assert_same_outputs(outputs(tmp_path / "fw_fresh"), outputs(tmp_path / "fw"))


def test_dmi_batches_that_miss_a_class():
    """CIFAR-100's class counts at batch 256: every batch misses a class (DMI's determinant is 0 there); with
    CIFAR-10's, almost none (docs/reproduction.md)."""
    from limit.train import batches_missing_a_class
    assert batches_missing_a_class(torch.arange(100).repeat(400), 100, 256, seed=42) == 1.0
    assert batches_missing_a_class(torch.arange(10).repeat(4000), 10, 256, seed=42) < 0.05


def trained_epochs(output):
    """The epochs an invocation trained, from its plain lines ('run epoch 2: loss ...')."""
    return [int(e) for e in re.findall(r"^run epoch (\d+):", output, re.M)]


def test_a_complete_run_started_again_trains_nothing_and_a_longer_budget_trains_on(fmnist_dir, make_labels, tmp_path,
                                                                                  capsys):
    cfg, run = config(fmnist_dir, make_labels(rate=0.5), epochs=2, keep_state=True), tmp_path / "run"
    first = train(cfg, run)
    history = (run / "history.csv").read_text(), (run / "history.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert train(cfg, run) == first  # a pack started again: its finished members return at once
    assert trained_epochs(capsys.readouterr().out) == []
    assert ((run / "history.csv").read_text(), (run / "history.csv").stat().st_mtime_ns) == history
    longer = train({**cfg, "epochs": 3}, run)  # its state kept: it trains the third epoch only
    out = capsys.readouterr().out
    assert f"{run}: resuming at epoch 2 of 3" in out and trained_epochs(out) == [2]
    assert longer["epochs_run"] == 3
    before, after = pd.read_csv(io.StringIO(history[0])), pd.read_csv(run / "history.csv")
    pd.testing.assert_frame_equal(after.iloc[:2], before)  # the first two epochs are the first run's rows


def test_a_longer_budget_without_the_state_trains_again_from_the_first_epoch(fmnist_dir, make_labels, tmp_path,
                                                                             capsys):
    cfg, run = config(fmnist_dir, make_labels(rate=0.5), epochs=1), tmp_path / "run"
    train(cfg, run)
    capsys.readouterr()
    assert train({**cfg, "epochs": 2}, run)["epochs_run"] == 2
    out = capsys.readouterr().out
    assert "resuming" not in out and trained_epochs(out) == [0, 1]


def run_files(run_dir):
    """Every file of a run directory: its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.iterdir())}


def test_a_finished_run_of_another_config_is_refused_and_left_as_it_was(fmnist_dir, make_labels, tmp_path, capsys):
    from limit.cli import main
    labels, run = make_labels(rate=0.5), tmp_path / "run"
    train(config(fmnist_dir, labels, epochs=1), run)
    before = run_files(run)
    with pytest.raises(TrainingError, match=r"different config \(lr: 0\.001 there, 0\.01 here\)"):
        train(config(fmnist_dir, labels, epochs=1, hparams={"lr": 0.01}), run)
    assert run_files(run) == before
    # the command line: one error line, exit status 2, nothing changed
    argv = ["train", "--dataset", "fashion_mnist", "--data-dir", str(fmnist_dir), "--labels", str(labels),
            "--method", "ce", "--epochs", "1", "--batch-size", "128", "--seed", "7", "--out", str(run),
            "--no-tracking"]
    capsys.readouterr()
    assert main([*argv, "--lr", "0.01"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and "lr: 0.001 there, 0.01 here" in errors[0] \
        and "--overwrite" in errors[0]
    assert run_files(run) == before
    # --overwrite replaces it: one config, one attempt
    assert main([*argv, "--lr", "0.01", "--overwrite"]) == 0
    assert json.loads((run / "config.json").read_text())["hparams"]["lr"] == 0.01
    assert len(json.loads((run / "job.json").read_text())["attempts"]) == 1


def test_a_refused_run_in_progress_is_left_as_it_was(fmnist_dir, make_labels, tmp_path):
    labels, run = make_labels(rate=0.5), tmp_path / "run"
    train(config(fmnist_dir, labels, epochs=2, keep_state=True), run)
    for finished in (True, False):  # a finished run that kept its state; then one in progress (no metrics.json)
        if not finished:
            (run / "metrics.json").unlink()
        before = run_files(run)
        with pytest.raises(TrainingError, match="different config") as other_labels:
            train(config(fmnist_dir, make_labels(rate=0.8), epochs=2), run)
        assert run_files(run) == before
        with pytest.raises(TrainingError, match="different config") as other_seed:
            train(config(fmnist_dir, labels, epochs=2, seed=8), run)
        assert run_files(run) == before
        assert "(labels file" in str(other_labels.value) and "(seed: 7 there, 8 here)" in str(other_seed.value)


def test_a_resumed_run_says_so_in_its_first_line(fmnist_dir, make_labels, tmp_path, capsys):
    cfg = config(fmnist_dir, make_labels(rate=0.5), epochs=2, keep_state=True)
    train(cfg, tmp_path / "run")
    capsys.readouterr()
    train({**cfg, "epochs": 3}, tmp_path / "run")  # a longer budget: it trains on from its state
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"{tmp_path / 'run'}: resuming at epoch 2 of 3 from {tmp_path / 'run' / 'state.pt'}"


# A batch's blocks, each above 32 MiB (glibc's largest dynamic threshold): mapped afresh and faulted in page by page
# every time, unless the run keeps freed memory; then only the first is, and the later ones (no larger: an aligned
# block of the same size does not fit in the hole of the one freed when a small allocation sits after it) reuse it.
# In a fresh process, as a training job is: the heap of a worker that has run other tests is not.
FAULTS_OF_FREED_BLOCKS = """
import resource, sys, torch
from limit import runtime
mib, times = 1 << 20, 10
kept = runtime.keep_freed_memory() if sys.argv[1] == "keep" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(times):
    torch.empty((64 - i) * mib, dtype=torch.uint8).fill_(1)
pages = sum((64 - i) * mib for i in range(times)) // resource.getpagesize()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, pages)
"""


@pytest.mark.pipeline  # a process of its own
def test_a_cpu_run_keeps_the_memory_it_frees_instead_of_faulting_it_in_again():
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_FREED_BLOCKS, "keep"], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    kept, faults, pages = done.stdout.split()
    assert kept == "True" and int(faults) < 0.3 * int(pages), done.stdout  # without the call: every page
