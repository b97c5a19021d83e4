"""The cost planner: one row per experiment block, the total line, expected epochs and packing."""
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from limit.runs.grid import expand_runs, pack_runs
from limit.tools import cost

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d,.]+)\s+([\d,.]+)\s+([\d,.]+)\s+([\d,.]+)\s+([\d,.]+)$")
TOTAL = re.compile(r"^total: ([\d,.]+) device-hours packed, ([\d,.]+) unpacked \((.+)\); ([\d,.]+) GB kept, "
                   r"([\d,.]+) GB of training state")


def plan_rows(config, runs_csv=None):
    lines = []
    totals = cost.plan(config, torch.device("cpu"), runs_csv, out=lines.append)
    rows = {m[1]: m.groups()[1:] for m in map(ROW.match, lines) if m}
    return rows, lines, totals


def default_config(tmp_path):
    config = cost.load_config(ROOT / "config" / "config.yaml")
    config["results"] = str(tmp_path / "results")
    return config


@pytest.mark.pipeline  # the plan times a Python start-up: it starts one
def test_plan_prints_a_row_per_block_and_the_total(tmp_path):
    config = default_config(tmp_path)
    rows, lines, (packed, unpacked) = plan_rows(config)
    assert set(rows) == set(config["experiments"])
    runs = expand_runs(config)
    packs = pack_runs(runs)  # the default config: 8 runs a job, one after another in one process
    for block, (n_runs, jobs, _, packed_h, unpacked_h, _, kept_gb, state_gb) in rows.items():
        assert int(n_runs) == sum(r["experiment"] == block for r in runs)
        assert int(jobs) == sum(any(m["experiment"] == block for m in members) for members in packs.values())
        assert 0 < float(packed_h) <= float(unpacked_h)  # a pack starts once; its members' work adds up
        assert float(state_gb) > 0 and float(kept_gb) > 0
    # main: 40 epochs, patience 8 -> ceil(4) + 8 + 1 = 13; figure1: patience 1000 -> all 30 epochs
    assert rows["main"][2] == "13" and rows["figure1"][2] == "30"
    total = TOTAL.match(next(line for line in lines if line.startswith("total: ")))
    assert total and "cores" in total[3]
    assert "Left out of the hours: data loading" in "\n".join(lines)  # the table says what it does not count
    assert abs(float(total[1].replace(",", "")) - packed) < 0.05 and packed < unpacked


def test_previous_runs_replace_the_epoch_estimate(tmp_path):
    runs = pd.DataFrame({"experiment": ["main", "main", "figure1"], "variant": ["ce", "ce", "ce"],
                         "epochs_run": [14, 16, 30]})
    runs.to_csv(tmp_path / "runs.csv", index=False)
    previous = cost.previous_epochs(tmp_path / "runs.csv")
    assert previous == {("main", "ce"): 15, ("figure1", "ce"): 30}
    row = {"experiment": "main", "variant": "ce", "epochs": 20, "patience": 8}
    assert cost.expected_epochs(row, previous) == 15
    assert cost.expected_epochs({**row, "variant": "mae"}, previous) == 11


@pytest.mark.pipeline  # the plan times a Python start-up: it starts one
def test_packing_fewer_jobs_no_more_hours(tmp_path):
    config = default_config(tmp_path)
    config["experiments"] = {"main": config["experiments"]["main"]}
    config["training"]["fashion_mnist"]["pack"] = 4
    rows, _, (packed, unpacked) = plan_rows(config)
    n_runs, jobs = int(rows["main"][0]), int(rows["main"][1])
    assert jobs < n_runs
    assert packed < unpacked  # on a CPU a pack costs its members' work, with one start-up instead of four


@pytest.mark.pipeline
def test_a_bad_config_is_one_error_line(tmp_path):
    bad = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    bad["training"]["fashion_mnist"]["batch_size"] = "many"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = subprocess.run([sys.executable, "-m", "limit", "cost", "--configfile", str(tmp_path / "bad.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and "batch_size" in out.stderr
