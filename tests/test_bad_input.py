"""Bad input anywhere (config, command line, files on disk) gets one clear line and writes nothing.

Every case must give exit status 2, exactly one line starting ``error:`` that names the offending key or file, no
traceback, and no file written. Each case runs in this process (the config's checks as the workflow runs them when
it parses a config, the command line through ``limit.cli.main``); a few run once more through the real entry points
(Snakemake on the Snakefile, ``python -m limit``).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from limit import labels as L
from limit.cli import main
from limit.runs.grid import ConfigError, expand_runs, load_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def config_edit(edit):
    def make(tmp_path, inputs):
        config = {"results": "results", "data_dir": str(inputs["data"]),
                  **yaml.safe_load((REPO / "config/test.yaml").read_text())}
        edit(config)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "work"), "--cores", "1",
                "--configfile", str(path)]
    return make


def methods(**grids):
    return config_edit(lambda c: c["experiments"]["main"]["methods"].update(grids))


def train(*args, labels="labels", method="ce", dataset="fashion_mnist", tracking=False):
    def make(tmp_path, inputs):
        return [sys.executable, "-m", "limit", "train", "--dataset", dataset, "--data-dir", str(inputs["data"]),
                "--labels", str(inputs[labels]), "--method", method, "--epochs", "1", "--device", "cpu",
                *([] if tracking else ["--no-tracking"]), "--out", str(tmp_path / "run"),
                *[a.format(**inputs) for a in args]]
    return make


def corrupt(*args, noise="uniform"):
    def make(tmp_path, inputs):
        return [sys.executable, "-m", "limit", "corrupt", "--dataset", "fashion_mnist", "--data-dir",
                str(inputs["data"]), "--noise", noise, "--seed", "1", "--out", str(tmp_path / "out.npz"), *args]
    return make


# (case, command, text the error line must contain)
CASES = [
    # the config, through Snakemake
    ("config: lamb 0 for a sampling method", methods(limit_g_s={"beta": [1], "lamb": [0]}),
     "experiments.main.methods.limit_g_s.lamb"),
    ("config: dropout 1.5", methods(ce_dropout={"method": "ce", "dropout": [1.5]}),
     "experiments.main.methods.ce_dropout.dropout"),
    ("config: lr 0", methods(dmi={"lr": [0]}), "experiments.main.methods.dmi.lr"),
    ("config: sigma < 0", methods(ce_gn={"sigma": [-1]}), "experiments.main.methods.ce_gn.sigma"),
    ("config: epochs 0", config_edit(lambda c: c["training"]["fashion_mnist"].update(epochs=0)),
     "training.fashion_mnist.epochs"),
    ("config: patience 0", config_edit(lambda c: c["experiments"]["main"].update(patience=0)),
     "experiments.main.patience"),
    ("config: n larger than the training split", config_edit(lambda c: c["experiments"]["main"].update(n=[100000])),
     "experiments.main.n: n = 100000 is larger than the training split of fashion_mnist (48000 examples)"),
    ("config: val_size larger than the validation split",
     config_edit(lambda c: c["training"]["fashion_mnist"].update(val_size=20000)),
     "training.fashion_mnist.val_size: 20000 is larger than the validation split of fashion_mnist"),
    ("config: password in the tracking URI",
     config_edit(lambda c: c["mlflow"].update(tracking_uri="http://me:hunter2@127.0.0.1:5000")), "mlflow.tracking_uri"),
    # the command line
    ("train: --epochs 0", train("--epochs", "0"), "--epochs"),
    ("train: --patience 0", train("--patience", "0"), "--patience"),
    ("train: --lamb 0 for a sampling method", train("--lamb", "0", "--beta", "1", method="limit_l_s"), "lamb"),
    ("train: --dropout 1.5", train("--dropout", "1.5"), "dropout"),
    ("train: --lr 0", train("--lr", "0"), "lr"),
    ("train: --sigma < 0", train("--sigma", "-0.5", method="ce_gn"), "sigma"),
    ("train: --batch-size 0", train("--batch-size", "0"), "--batch-size"),
    ("train: password on the command line", train("--tracking-uri", "http://me:hunter2@127.0.0.1:5000"),
     "--tracking-uri"),
    ("train: a hyperparameter the method does not use", train("--beta", "5"),
     "--beta: not a hyperparameter of 'ce' (its hyperparameters: --dropout, --lr, --weight-decay)"),
    ("train: a misspelt method", train(method="limt_l"), "unknown method 'limt_l'; did you mean 'limit_l'?"),
    ("train: a misspelt dataset", train(dataset="fashion_mnst"), "unknown dataset 'fashion_mnst'; did you mean "
                                                                 "'fashion_mnist'?"),
    ("corrupt: a misspelt noise model", corrupt("--rate", "0.5", noise="unifrom"),
     "unknown noise model 'unifrom'; did you mean 'uniform'?"),
    ("config: a misspelt key",
     config_edit(lambda c: c["experiments"]["main"].update(seed=c["experiments"]["main"].pop("seeds"))),
     "experiments.main: unknown key 'seed'; did you mean 'seeds'?"),
    ("import-images: a missing path", lambda tmp_path, inputs: [sys.executable, "-m", "limit", "import-images",
                                                                str(tmp_path / "data/missing"), "--out",
                                                                str(tmp_path / "cache")],
     "data/missing: no such file or directory"),
    ("train: FW without a complete CE run", train("--init-from", "{tmp}", method="fw"), "--init-from"),
    ("corrupt: rate 1.5", corrupt("--rate", "1.5"), "noise rate 1.5"),
    ("corrupt: --n not a number", corrupt("--rate", "0.5", "--n", "many"), "--n"),
    # files on disk
    ("labels file missing", train(labels="missing"), "missing.npz"),
    ("labels file empty", train(labels="empty"), "empty.npz"),
    ("labels file truncated", train(labels="truncated"), "truncated.npz"),
    ("labels file of another program", train(labels="foreign"), "foreign.npz"),
    ("labels file of another dataset", train(labels="mnist"), "mnist.npz"),
    ("labels file made from other data", train(labels="other_data"),
     "other_data.npz was made from other fashion_mnist data than"),
]


@pytest.fixture(scope="module")
def inputs(fmnist_dir, make_labels, tmp_path_factory):
    """Good and bad input files, shared by every case (none of them is written to)."""
    root = tmp_path_factory.mktemp("inputs")
    good = make_labels(n=256, val_size=256)
    arrays, meta = L.read_labels_file(good)
    (root / "empty.npz").write_bytes(b"")
    (root / "truncated.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    np.savez(root / "foreign.npz", weights=np.arange(10))
    L.write_labels_file(root / "mnist.npz", arrays, {**meta, "dataset": "mnist"})
    L.write_labels_file(root / "other_data.npz", arrays, {**meta, "data_sha256": "0" * 64})
    files = {name: root / f"{name}.npz" for name in ("empty", "truncated", "foreign", "mnist", "missing", "other_data")}
    return {"data": fmnist_dir, "labels": good, **files}


def files_under(path):
    return {p for p in path.rglob("*") if p.is_file() and ".snakemake" not in p.parts}


def run_in_process(argv, capsys):
    """A ``limit`` command in this process, as ``python -m limit`` runs it: (exit status, output)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def check_config_file(path):
    """The checks the workflow runs when it parses a config (workflow/rules/common.smk), as its error line."""
    try:
        expand_runs(load_config(path))
    except ConfigError as exc:
        return 2, f"error: invalid config: {exc}"
    return 0, ""


def assert_one_error_line(code, output, names):
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2, output[-3000:]
    assert len(errors) == 1 and names in errors[0], output[-3000:]
    assert "Traceback" not in output and "hunter2" not in output, output[-3000:]


@pytest.mark.parametrize("case,command,names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line_and_writes_nothing(case, command, names, inputs, tmp_path, capsys,
                                                           monkeypatch):
    argv = command(tmp_path, {**inputs, "tmp": tmp_path})
    before = files_under(tmp_path)
    monkeypatch.chdir(tmp_path)
    if argv[0] == SNAKEMAKE:
        code, output = check_config_file(argv[argv.index("--configfile") + 1])
    else:
        code, output = run_in_process(argv[3:], capsys)  # after: python -m limit
    assert_one_error_line(code, output, names)
    assert files_under(tmp_path) == before, sorted(files_under(tmp_path) - before)


# Once more as a user runs them: Snakemake on a bad config, and `python -m limit` with a bad argument and a bad file.
END_TO_END = ["config: lr 0", "config: n larger than the training split", "train: --epochs 0", "labels file truncated"]


@pytest.mark.pipeline
@pytest.mark.parametrize("case,command,names", [c for c in CASES if c[0] in END_TO_END], ids=END_TO_END)
def test_bad_input_through_the_real_entry_points(case, command, names, inputs, tmp_path):
    argv = command(tmp_path, {**inputs, "tmp": tmp_path})
    before = files_under(tmp_path)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert_one_error_line(done.returncode, done.stdout + done.stderr, names)
    assert files_under(tmp_path) == before, sorted(files_under(tmp_path) - before)
