"""``limit plan``: what a config asks for and what is left of it, on one screen (a readable dry run).

Runs per experiment block and dataset, how many have finished, and Snakemake's own count of the jobs left per rule.
A run is one training of one configuration and seed; a job is what Snakemake schedules (a Slurm job on a
cluster): one run, or a pack of runs that share a GPU.
"""
import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

from limit.runs import rundir
from limit.runs.grid import ConfigError, expand_runs, load_config, pack_runs


def finished_runs(rows, results):
    """Run ids whose run directory under ``results`` is complete."""
    return {r["run_id"] for r in rows if (Path(results) / rundir.RUNS_DIR / r["run_id"] / rundir.METRICS).exists()}


def snakemake_jobs(configfile, extra):
    """Snakemake's job table of a dry run (``snakemake -n --quiet rules``): [(rule, jobs)]."""
    snakemake = Path(sys.executable).with_name("snakemake")
    done = subprocess.run([str(snakemake), "-n", "--quiet", "rules", "--configfile", str(configfile), *extra],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError((done.stderr.strip().splitlines() or ["snakemake failed"])[-1].removeprefix("error: "))
    lines = (done.stdout + done.stderr).splitlines()
    if not any(line.startswith("job ") for line in lines):
        return []
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("job ")) + 2:]
    rows = []
    for line in table:
        if not line.strip() or line.startswith("total"):
            break
        rule, count = line.split()
        rows.append((rule, int(count)))
    return rows


def add_plan_arguments(parser):
    parser.description = ("Runs and finished runs per experiment block, then the jobs a dry run "
                          "(snakemake -n --quiet rules) would start, per rule. Run it from the repository.")
    parser.add_argument("--configfile", required=True, help="workflow config, e.g. config/paper.yaml")
    parser.add_argument("snakemake_args", nargs=argparse.REMAINDER, metavar="...",
                        help="more Snakemake options, e.g. --profile slurm")


def run_plan(args):
    config = load_config(args.configfile)
    rows = expand_runs(config)
    finished = finished_runs(rows, config["results"])
    packs = pack_runs(rows)
    packed = sum(len(m) for m in packs.values())
    print(f"{args.configfile}: {len(rows):,} runs in {len(rows) - packed + len(packs):,} training jobs "
          f"({len(packs):,} packs of {packed:,} runs); {len(finished):,} runs finished")
    blocks = Counter((r["experiment"], r["dataset"]) for r in rows)
    done = Counter((r["experiment"], r["dataset"]) for r in rows if r["run_id"] in finished)
    width = max(len(f"{e}/{d}") for e, d in blocks)
    print(f"\n{'block/dataset':<{width}}  {'runs':>7}  {'finished':>8}")
    for (experiment, dataset), count in blocks.items():
        print(f"{experiment + '/' + dataset:<{width}}  {count:>7,}  {done[experiment, dataset]:>8,}")
    jobs = snakemake_jobs(args.configfile, args.snakemake_args)
    print("\njobs left (snakemake -n" + "".join(f" {a}" for a in args.snakemake_args) + "):")
    for rule, count in jobs or [("nothing to be done", 0)]:
        print(f"  {rule:<20} {count:>7,}" if count else f"  {rule}")
