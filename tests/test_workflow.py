"""The Snakemake workflow: the DAG of the paper and tiny configs, bad configs, and a local end-to-end run."""
import collections
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from limit.datasets.clothing1m import write_synthetic_release
from limit.report import paper
from limit.runs.grid import ConfigError, expand_runs, pack_runs, recorded_packs, selection_groups
from limit.runs.grid import load_config as grid_load_config
from limit.runs.plan import merged_config

from pipeline_helpers import git

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(workdir, *args, configfile="config/test.yaml", timeout=600, env=None):
    config = configfile if os.path.isabs(configfile) else str(REPO / configfile)
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", config,
                           *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                               **(env or {})})


def job_counts(output):
    """The 'Job stats' table of a dry run as {rule: count}."""
    block = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def load_config(path):
    defaults = {"results": "results", "data_dir": "data"}
    return {**defaults, **yaml.safe_load((REPO / path).read_text())}


@pytest.mark.pipeline
def test_paper_config_builds_the_full_grid(tmp_path):
    result = snakemake(tmp_path, "-n", configfile="config/paper.yaml", timeout=300)
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    rows = expand_runs(load_config("config/paper.yaml"))
    packs = pack_runs(rows)
    # MNIST (and Figure 1's MNIST MLP) is packed 16 runs to a job; every other run is its own job
    assert {m["dataset"] for members in packs.values() for m in members} == {"mnist"}
    assert sum(len(members) for members in packs.values()) == 4884 + 12
    assert max(len(members) for members in packs.values()) == 16
    # one rule for all packs; no job gates training on MLflow (the store is prepared when the run starts)
    assert counts["train"] == 5271 - 4896 and counts["train_pack"] == len(packs) == 307
    assert counts["aggregate"] == 1 and "mlflow_init" not in counts
    runs = pd.DataFrame(rows)
    mnist = runs[runs.experiment.str.startswith("mnist")].groupby("method").size().to_dict()
    # the paper's MNIST grid: 4,884 runs
    assert mnist == {"ce": 60, "mae": 60, "fw": 60, "ce_gn": 240, "ce_ln": 240, "dmi": 240, "limit_g": 480,
                     "limit_l": 480, "limit_g_s": 1152, "limit_l_s": 1152, "soft_reg": 720}
    per_block = runs.groupby("experiment").size().to_dict()
    assert per_block["cifar10_uniform"] == 140 and per_block["cifar10_pair"] == 165
    assert per_block["cifar100"] == 31 and per_block["figure1"] == 12
    assert set(runs[runs.experiment == "mnist_3seeds"].seed) == {42, 43, 44}
    assert set(runs[runs.experiment == "mnist"].seed) == {42, 43, 44, 45, 46}
    # CIFAR LIMIT runs use patience 200 as the authors' commands; Figure 1 never stops early
    assert (runs[(runs.experiment == "cifar10_uniform") & runs.method.str.startswith("limit")].patience == 200).all()
    assert (runs[runs.experiment == "figure1"].patience == 401).all()
    assert (runs[runs.dataset == "clothing1m"].epochs == 30).all()


@pytest.mark.pipeline
def test_the_paper_grid_without_clothing1m_is_one_switch(tmp_path):
    """Clothing1M must be requested from its authors: without it, one switch (docs/cluster.md) plans the rest of the
    grid, and the dry run says in one line what stays empty."""
    result = snakemake(tmp_path, "-n", "--config", "skip_datasets=[clothing1m]", configfile="config/paper.yaml",
                       timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = [line for line in result.stdout.splitlines() if "Command:" not in line]  # the header repeats the command
    assert not [line for line in jobs if "clothing1m" in line]  # neither its data, nor its labels, nor a run
    counts = job_counts(result.stdout)
    assert counts["prepare_data"] == 3 and counts["train"] == 375 - 39 and counts["train_pack"] == 307
    notes = [line for line in result.stderr.splitlines() if "skip_datasets" in line]
    assert notes == ["note: skip_datasets: no job for clothing1m; these stay empty: Table 2's column Clothing1M, "
                     "real label noise, all training samples; Figures 3 and A0 of Clothing1M, real label noise, all "
                     "training samples"]


@pytest.mark.pipeline
def test_prepare_finds_clothing1m_where_the_docs_put_it(tmp_path):
    """docs/cluster.md and config/paper.yaml put the release in <data_dir>/clothing1m: the prepare rule checks it
    there."""
    data = tmp_path / "data"
    write_synthetic_release(data / "clothing1m")
    target = "results/data/clothing1m.ready"
    result = snakemake(tmp_path / "work", "--cores", "1", target, "--config", f"data_dir={data}",
                       configfile="config/paper.yaml", timeout=300)
    log = tmp_path / "work/results/logs/prepare/clothing1m.log"
    assert result.returncode == 0, result.stderr[-2000:] + (log.read_text() if log.exists() else "")
    assert (tmp_path / "work" / target).exists() and "clothing1m: files present" in log.read_text()


def test_a_finished_pack_keeps_its_runs_when_the_config_changes(tmp_path):
    rows = expand_runs(load_config("config/paper.yaml"))
    packs = pack_runs(rows)
    assert pack_runs(rows) == packs  # a pack's name is a function of its runs
    name, members = next(iter(packs.items()))
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / f"{name}.json").write_text(
        json.dumps({"run_dirs": [f"results/runs/{m['run_id']}" for m in members]}))
    recorded = recorded_packs(tmp_path / "packs", "results/runs")
    assert recorded == {m["run_id"]: name for m in members}
    config = load_config("config/paper.yaml")
    # a new variant first in the first block shifts every later run along the packing order
    config["experiments"]["mnist"]["methods"] = {"ce_slow": {"method": "ce", "lr": [0.0001]},
                                                 **config["experiments"]["mnist"]["methods"]}
    changed = expand_runs(config)
    repacked = pack_runs(changed, recorded)
    assert repacked[name] == members  # the finished pack keeps exactly its runs
    old = {m["run_id"] for m in rows}
    packed_new = {m["run_id"] for n, ms in repacked.items() if n != name for m in ms}
    assert {r["run_id"] for r in changed if r["pack"] > 1} == packed_new | set(recorded)
    assert len(packed_new - old) == 4 * 3 * 5  # the new variant: 4 rates x 3 training-set sizes x 5 seeds


# every config, the rehearsal as the overlay of the paper config that docs/cluster.md makes it
OVERLAYS = {"rehearsal.yaml": "paper.yaml"}
CONFIG_SETS = [[OVERLAYS[name], name] if name in OVERLAYS else [name]
               for name in sorted(p.name for p in (REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("configfiles", CONFIG_SETS, ids=["+".join(c) for c in CONFIG_SETS])
@pytest.mark.pipeline
def test_every_config_parses_without_the_scientific_stack(configfiles, tmp_path):
    """A login node's `snakemake -n` needs neither torch nor matplotlib: here they cannot even be imported."""
    blocked = tmp_path / "blocked"
    for name in ("torch", "torchvision", "matplotlib", "sklearn", "seaborn"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} imported while parsing')")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("CIFAR-10_human.pt", "CIFAR-100_human.pt"):  # CIFAR-N's label files, checked for at parse time
        (data / name).touch()
    paths = [str(REPO / "config" / name) for name in configfiles]
    result = snakemake(tmp_path / "work", *paths[1:], "-n", "--config", f"data_dir={data}", configfile=paths[0],
                       env={"PYTHONPATH": str(blocked)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = expand_runs(merged_config(paths, [f"data_dir={data}"]))
    jobs = job_counts(result.stdout)
    assert jobs.get("train", 0) == sum(1 for r in rows if r["pack"] == 1)
    assert jobs.get("train_pack", 0) == len(pack_runs(rows))


def dot_graph(workdir):
    """Jobs (rule, wildcards) and dependency edges of the tiny config from `snakemake --dag`."""
    result = snakemake(workdir, "--dag")
    assert result.returncode == 0, result.stderr
    nodes = {}
    for m in re.finditer(r'^\s*(\d+)\[label = "([^"]*)"', result.stdout, re.M):
        lines = m.group(2).split("\\n")
        nodes[m.group(1)] = (lines[0], dict(line.split(": ", 1) for line in lines[1:] if ": " in line))
    edges = {(a, b) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", result.stdout, re.M)}
    return nodes, edges


@pytest.mark.pipeline
def test_tiny_dag_wires_ce_runs_and_shared_labels(tmp_path):
    nodes, edges = dot_graph(tmp_path)
    train = {k: v[1]["run"] for k, v in nodes.items() if v[0] == "train"}
    labels = {k: v[1]["setting"] for k, v in nodes.items() if v[0] == "corrupt_labels"}
    assert len(train) == 10 and sorted(labels.values()) == ["fashion_mnist/uniform-0.5/n256/seed1",
                                                             "fashion_mnist/uniform-0.5/n256/seed2"]
    parents = collections.defaultdict(set)
    for a, b in edges:
        parents[b].add(a)
    for node, run in train.items():
        seed = re.search(r"/seed(\d+)/", run).group(1)
        # every method of a setting reads the same corrupted-labels file
        assert {labels[p] for p in parents[node] if p in labels} == {f"fashion_mnist/uniform-0.5/n256/seed{seed}"}
        ce_parents = [train[p] for p in parents[node] if p in train]
        if "/fw/" in run or "/limit_l_init/" in run:
            assert ce_parents == [f"main/fashion_mnist/uniform-0.5/n256/seed{seed}/ce/default"]
        else:
            assert ce_parents == []


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(colour="blue"), "config: unknown key 'colour' (choose one of data_dir,"),
    (lambda c: c["experiments"]["main"]["methods"].update(sgd={}), "experiments.main.methods.sgd: unknown method"),
    (lambda c: c["experiments"]["main"].update(datasets=["svhn"]), "svhn"),
    (lambda c: c["experiments"]["main"].update(rates=[1.2]), "1.2"),
    (lambda c: c["experiments"]["main"].update(rates=[0.95]), "degenerate limit"),
    (lambda c: c["experiments"]["main"]["methods"].update(limit_g={"beta": ["ten"]}), "'ten' is not of type"),
    (lambda c: c["experiments"]["main"]["methods"].update(limit_g={"lamb": [1.0]}),
     "limit_g.lamb: not a hyperparameter"),
    (lambda c: c["experiments"]["main"].update(noise=["pair"]), "only for cifar10"),
    (lambda c: c["experiments"]["main"]["methods"].pop("ce"), "starts from the CE run"),
    (lambda c: c.update(skip_datasets=["clothing1m"]), "skip_datasets: 'clothing1m' is in no experiment block"),
    (lambda c: c.update(skip_datasets="clothing1m"), "skip_datasets: 'clothing1m' is not of type 'array'"),
])
def test_invalid_config_fails_before_any_job_naming_the_key(tmp_path, edit, message):
    """The checks the workflow runs when it parses a config (tests/test_bad_input.py runs one through Snakemake)."""
    config = load_config("config/test.yaml")
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand_runs(grid_load_config(path))


@pytest.mark.pipeline
def test_the_default_pipeline_makes_labels_first_and_the_longest_training_next(tmp_path):
    """More jobs are ready than the 2 cores take, and Snakemake starts them by priority: every labels file before
    any training; then the packs by their runs' epoch caps times training examples, longest first (Figure 1's
    4 runs x 30 epochs x 5,000 examples first), those whose runs start from a CE run after all others; so that
    short jobs fill the end (docs/default-pipeline-time.md). The dry run shows each job's priority."""
    result = snakemake(tmp_path, "-n", "--cores", "2", configfile="config/config.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = re.findall(r"^rule (\w+):\n(?:\s+.*\n)*?\s+wildcards: \w+=(\S+)\n\s+priority: (\d+)", result.stdout,
                      re.M)
    labels = [int(p) for rule, _, p in jobs if rule == "corrupt_labels"]
    priority = {name: int(p) for rule, name, p in jobs if rule == "train_pack"}
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    packs = pack_runs(expand_runs({"results": "results", **config}))
    assert len(labels) == 10 and priority.keys() == packs.keys()  # every job of these rules
    assert min(labels) > max(priority.values())
    order = {name: (not runs[0]["init_from"], sum(r["epochs"] * int(r["n"]) for r in runs))
             for name, runs in packs.items()}
    assert len(set(order.values())) == 4  # (the test sees four kinds: Figure 1's, main, from CE, 8 or 3 runs)
    for a, b in itertools.permutations(packs, 2):
        assert order[a] <= order[b] or priority[a] > priority[b], (a, b)


@pytest.mark.pipeline
def test_the_mlflow_store_follows_the_results_directory(tmp_path, monkeypatch):
    """A config with its own ``results:`` tracks into RESULTS/mlflow.db, not the default results/mlflow.db: the
    select jobs of a dry run (mlflow.live off) pass that store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config("config/test.yaml")
    config["results"] = "somewhere_else"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path / "work", "-n", "-p", configfile=str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    stores = set(re.findall(r"--tracking-uri (\S+)", result.stdout))
    assert stores == {"sqlite:///somewhere_else/mlflow.db"}, stores
    assert job_counts(result.stdout)["select"] == len(re.findall(r"python -m limit select", result.stdout))


@pytest.mark.pipeline
def test_default_workflow_changes_no_tracked_file(tiny_pipeline):
    assert (tiny_pipeline / "results" / "figures" / "figure3_curves.png").exists()  # the report ran
    assert git(tiny_pipeline, "status", "--porcelain", "--untracked-files=no") == ""
    # nothing it wrote is left for `git add` either: every output is ignored
    assert git(tiny_pipeline, "status", "--porcelain") == ""


@pytest.mark.pipeline
def test_tiny_pipeline_runs_every_stage(tiny_pipeline):
    results = tiny_pipeline / "results"
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 10 and set(runs.variant) == {"ce", "fw", "limit_g", "limit_l_init"}
    for run in runs.itertuples():  # each run directory holds what runs.csv says of it
        run_dir = tiny_pipeline / run.run_dir
        metrics = json.loads((run_dir / "metrics.json").read_text())
        history = pd.read_csv(run_dir / "history.csv")
        assert len(history) == metrics["epochs_run"] == run.epochs_run and metrics["test_acc"] == run.test_acc
        assert history["val_acc"][metrics["best_epoch"]] == history["val_acc"].max() == metrics["best_val_acc"]
        with np.load(run_dir / "test_outputs.npz") as outputs:  # the test accuracy is that of these logits
            assert len(outputs["labels"]) == metrics["test_examples"]
            accuracy = (outputs["logits"].argmax(1) == outputs["labels"]).mean()
            assert accuracy == pytest.approx(metrics["test_acc"], abs=1e-6)
        assert json.loads((run_dir / "config.json").read_text())["method"] == run.method
        assert torch.load(run_dir / "best.pt", weights_only=True)
    # the table: a row a method, its cell the test accuracy (%) of the selected configuration, mean ± std over seeds
    table = (results / "tables" / "fashion_mnist_uniform.md").read_text()
    cells = dict(re.findall(r"^\| (.+?) \| \**([\d.]+ ± [\d.]+)\** \|$", table, re.M))
    curves = pd.read_csv(results / "figures" / "figure3_curves.csv").query("kind == 'mean'")
    drawn = [c.pivot(index="epoch", columns="panel", values="value")[["train_acc", "test_acc"]].to_numpy()
             for _, c in curves.groupby("curve")]
    assert len(cells) == len(drawn) == 4
    for variant, label in paper.METHOD_LABELS.items():
        chosen = runs[(runs.variant == variant) & runs.selected]
        if chosen.empty:
            continue
        accuracy = chosen.test_acc * 100
        assert cells[label] == f"{accuracy.mean():.1f} ± {accuracy.std():.1f}", variant
        # Figure 3: a curve a method, the mean over its seeds of each epoch's training and test accuracy
        mean = pd.concat(pd.read_csv(tiny_pipeline / d / "history.csv") for d in chosen.run_dir).groupby("epoch")
        mean = mean[["train_acc", "test_acc"]].mean().to_numpy()
        assert sum(d.shape == mean.shape and np.allclose(d, mean) for d in drawn) == 1, variant


@pytest.mark.pipeline
def test_selection_picks_the_best_mean_validation_accuracy(tiny_pipeline):
    runs = pd.read_csv(tiny_pipeline / "results" / "runs.csv")
    for variant, group in runs.groupby("variant"):
        means = group.groupby("hparams")["best_val_acc"].mean()
        selected = json.loads((tiny_pipeline / "results" / "selected" / "main" / "fashion_mnist" / "uniform-0.5" /
                               "n256" / f"{variant}.json").read_text())["selected"]
        assert selected == means.idxmax()
        assert set(group[group.selected].hparams) == {selected}
    assert len(runs[runs.variant == "limit_g"].hparams.unique()) == 2


@pytest.mark.pipeline
def test_changing_one_methods_grid_reruns_only_that_methods_jobs(tiny_pipeline, fmnist_dir, tmp_path):
    config = load_config("config/test.yaml")
    config["data_dir"] = str(fmnist_dir)
    config["experiments"]["main"]["methods"]["limit_g"]["beta"] = [0, 10, 3]
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tiny_pipeline, "-n", "--cores", "1", configfile=str(path))
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 2  # beta = 3, two seeds; nothing else retrains
    trained = re.findall(r"rule train:\n(?:.*\n)*?\s+wildcards: run=(\S+)", result.stdout)
    assert sorted(trained) == [f"main/fashion_mnist/uniform-0.5/n256/seed{s}/limit_g/beta3" for s in (1, 2)]
    unchanged = snakemake(tiny_pipeline, "-n", "--cores", "1", "--config", f"data_dir={fmnist_dir}")
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr


def copy_pipeline(pipeline, to):
    """A copy of a finished pipeline, with its files' times and Snakemake's records, to change freely."""
    shutil.copytree(pipeline, to, symlinks=True)
    return to


@pytest.mark.pipeline
def test_a_changed_config_trains_exactly_its_new_runs_in_one_invocation(tiny_pipeline, fmnist_dir, tmp_path):
    work = copy_pipeline(tiny_pipeline, tmp_path / "work")
    config = load_config("config/test.yaml")
    config["data_dir"] = str(fmnist_dir)
    before = {r["run_id"] for r in expand_runs(config)}
    config["experiments"]["main"]["methods"]["mae_slow"] = {"method": "mae", "lr": [0.0001]}  # a new variant
    # and a new rate, in a block of its own: new labels, a new group, a new table row (one run trains them)
    config["experiments"]["extra"] = {**config["experiments"]["main"], "rates": [0.2], "seeds": [1],
                                      "methods": {"ce": {}}}
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    rows = expand_runs(config)
    new = {r["run_id"] for r in rows} - before
    assert len(new) == 2 + 1  # the variant at the old rate (two seeds); CE at the new one
    trained_before = {p: p.stat().st_mtime_ns for p in (work / "results/runs").rglob("metrics.json")}

    plan = snakemake(work, "-n", "--cores", "2", configfile=str(path))
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert set(re.findall(r"rule train:\n(?:.*\n)*?\s+wildcards: run=(\S+)", plan.stdout)) == new
    assert job_counts(plan.stdout)["train"] == len(new)
    assert "Params have changed" not in plan.stdout  # nothing that ran before is planned again

    run = snakemake(work, "--cores", "2", configfile=str(path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    runs = pd.read_csv(work / "results/runs.csv")
    assert set(runs.run_id) == before | new and set(runs.rate) == {0.2, 0.5}
    assert "0.2" in (work / "results/tables/fashion_mnist_uniform.md").read_text()  # the tables were rendered again
    assert {p: p.stat().st_mtime_ns for p in trained_before} == trained_before  # nothing trained again
    again = snakemake(work, "-n", "--cores", "2", configfile=str(path))
    assert "Nothing to be done" in again.stdout + again.stderr

    client = MlflowClient(f"sqlite:///{work}/results/mlflow.db")
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    parents = {r.info.run_id: r.data.tags["limit.group"] for r in everything if "limit.group" in r.data.tags}
    children = collections.Counter(r.data.tags.get("mlflow.parentRunId") for r in everything)
    # one parent per group, none empty
    assert len(parents) == len(selection_groups(rows)) and all(children[p] >= 1 for p in parents)


@pytest.mark.pipeline
def test_a_failed_report_leaves_the_previous_tables_and_figures(tiny_pipeline, fmnist_dir, tmp_path):
    work = copy_pipeline(tiny_pipeline, tmp_path / "work")
    outputs = [work / "results/tables", work / "results/figures"]
    before = {p: p.read_bytes() for d in outputs for p in d.rglob("*") if p.is_file()}
    runs_csv = work / "results/runs.csv"
    runs = pd.read_csv(runs_csv)
    # a new run table naming a run directory that is not there: the report starts, then fails on the figures
    runs.loc[runs.selected.idxmax(), "run_dir"] = "results/runs/missing"
    runs.to_csv(runs_csv, index=False)
    failed = snakemake(work, "--cores", "1", "--config", f"data_dir={fmnist_dir}")
    assert failed.returncode != 0 and "report" in failed.stderr
    assert {p: p.read_bytes() for d in outputs for p in d.rglob("*") if p.is_file()} == before


@pytest.mark.pipeline
def test_moving_the_data_trains_nothing_again(tiny_pipeline, fmnist_dir, tmp_path):
    """A run's identity is its data's content, not its path: the same files at another path plan no job."""
    work = copy_pipeline(tiny_pipeline, tmp_path / "work")
    moved = tmp_path / "shared_fs" / "fashion-mnist"
    moved.parent.mkdir()
    moved.symlink_to(fmnist_dir, target_is_directory=True)
    plan = snakemake(work, "-n", "--cores", "1", "--config", f"data_dir={moved}")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-3000:]


@pytest.mark.pipeline
def test_a_labels_file_made_by_hand_at_the_pipelines_path_is_refused_before_any_job(tiny_pipeline, fmnist_dir,
                                                                                     tmp_path):
    from limit.labels import read_labels_file
    work = copy_pipeline(tiny_pipeline, tmp_path / "work")
    labels = "results/labels/fashion_mnist/uniform-0.5/n256/seed1.npz"
    by_hand = subprocess.run([sys.executable, "-m", "limit", "corrupt", "--dataset", "fashion_mnist", "--data-dir",
                              str(fmnist_dir), "--noise", "uniform", "--rate", "0.5", "--n", "256", "--seed", "1",
                              "--val-size", "300", "--out", str(work / labels)], capture_output=True, text=True)
    assert by_hand.returncode == 0, by_hand.stderr
    before = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()}
    refused = snakemake(work, "--cores", "1", "--config", f"data_dir={fmnist_dir}")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and errors == [
        f"error: {labels} was made by another command (val_size 300 (the config: 256)); remove it, and the "
        f"workflow makes its own"], refused.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()} == before
    (work / labels).unlink()  # as the error says; the runs were trained on the workflow's own labels file
    plan = snakemake(work, "-n", "--cores", "1", "--config", f"data_dir={fmnist_dir}")
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-3000:]
    rebuilt = snakemake(work, "--cores", "1", labels, "--config", f"data_dir={fmnist_dir}")  # (after --configfile's)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert read_labels_file(work / labels)[1]["val_size"] == 256


@pytest.mark.pipeline
def test_an_interrupted_pipeline_says_how_to_go_on_and_its_run_resumes_keeping_each_attempts_log(fmnist_dir,
                                                                                                  tmp_path):
    import signal
    work = tmp_path / "work"
    work.mkdir()
    # one CE run of 200 epochs, no MLflow, no test curve: long enough to be stopped in the middle
    overlay = tmp_path / "one_run.yaml"
    overlay.write_text(json.dumps({"mlflow": {"enabled": False}, "training": {"fashion_mnist": {
        "epochs": 200, "patience": 200, "test_curve_every": 1000}}, "experiments": {"main": {
            "seeds": [1], "methods": {"ce": {}}}}}))
    run = "main/fashion_mnist/uniform-0.5/n256/seed1/ce/default"
    log, attempts = work / "results/logs/train" / f"{run}.log", work / "results/logs/train" / f"{run}.attempts.log"
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), f"results/runs/{run}/metrics.json",
               "--cores", "1", "--configfile", str(REPO / "config/test.yaml"), str(overlay), "--config",
               f"data_dir={fmnist_dir}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # as from a terminal: SIGINT at its default (a CI started in the background ignores it; children inherit that)
    pipeline = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Ctrl-C (the terminal signals Snakemake and its jobs) once two epochs are checkpointed, sent by a watcher of
    # its own: this test's process, starved on a loaded machine, once looked only after the run had ended
    watcher = subprocess.Popen(["bash", "-c", 'while kill -0 -- "-$2" 2>/dev/null; do '
                                'if grep -qs "default epoch 1:" "$1"; then kill -INT -- "-$2"; exit 0; fi; sleep 0.1; '
                                'done; exit 1', "watch", str(attempts), str(pipeline.pid)])
    assert watcher.wait(timeout=600) == 0, "the pipeline ended before it was interrupted"
    output = pipeline.communicate(timeout=300)[0]
    assert pipeline.returncode != 0 and not (work / "results/runs" / run / "metrics.json").exists(), output[-3000:]
    assert output.rstrip().splitlines()[-1].startswith(
        "limit-pipeline stopped before the end: run the same command again to go on"), output[-3000:]
    assert "Traceback" not in output
    first = attempts.read_text()
    assert "default epoch 1:" in first and "Traceback" not in first, first

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = log.read_text().splitlines()
    assert re.fullmatch(rf"results/runs/{run}: resuming at epoch [1-9]\d* of 200 from results/runs/{run}/state\.pt",
                        resumed[0]), resumed[:3]
    assert attempts.read_text().startswith(first) and resumed[0] in attempts.read_text()  # both attempts kept
