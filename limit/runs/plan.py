"""``limit plan``: what a config asks for and what is left of it, on one screen (a readable dry run).

Runs per experiment block and dataset, how many have finished, and Snakemake's own count of the jobs left per rule.
A run is one training of one configuration and seed; a job is what Snakemake schedules (a Slurm job on a
cluster): one run, or a pack of runs that share a GPU. Every option but ``--configfile`` and ``--config`` (which
``limit plan`` reads too) goes to Snakemake as it is, e.g. ``--profile slurm``.
"""
import subprocess
import sys
from collections import Counter
from pathlib import Path

from limit.runs import rundir
from limit.runs.grid import ConfigError, checked_config, expand_runs, pack_runs

DEFAULT_CONFIG = "config/config.yaml"  # the Snakefile's, when no config file is given


def finished_runs(rows, results):
    """Run ids whose run directory under ``results`` is complete."""
    return {r["run_id"] for r in rows if (Path(results) / rundir.RUNS_DIR / r["run_id"] / rundir.METRICS).exists()}


def merged_config(configfiles, entries):
    """The workflow's config as Snakemake builds it: the config files merged in order (nested keys merged, lists
    replaced), then the ``--config KEY=VALUE`` entries, the schema's defaults filled in; ConfigError otherwise."""
    import yaml
    from snakemake.utils import update_config
    config = {}
    for path in configfiles:
        try:
            update_config(config, yaml.safe_load(Path(path).read_text()) or {})
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror.lower()}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise ConfigError(f"--config {entry}: not KEY=VALUE")
        update_config(config, {key: yaml.safe_load(value) if value else None})
    return checked_config(config, " ".join(map(str, configfiles)))


def snakemake_failure(output):
    """Snakemake's own error, from the output of a failed run: the workflow's ``error:`` lines, or Snakemake's
    error message (from its first line naming an error), never its informational lines."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error:")]
    if not errors:
        first = next((i for i, line in enumerate(lines) if "Error" in line or "error" in line), None)
        errors = lines[first:] if first is not None else lines[-1:]
    return " ".join(errors) or "snakemake failed"


def snakemake_jobs(snakemake_args):
    """The jobs a dry run would start per rule (``snakemake -n --quiet rules``): [(rule, jobs)].

    Snakemake 9 has no machine-readable count of the jobs left: ``--summary`` lists output files, ``--d3dag``
    every job, finished ones included (and none beyond 10,000). So this reads the dry run's job table, whose
    total it checks against its rows."""
    snakemake = Path(sys.executable).with_name("snakemake")
    done = subprocess.run([str(snakemake), "-n", "--quiet", "rules", *snakemake_args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise ConfigError(f"snakemake {' '.join(snakemake_args)}: {snakemake_failure(output)}")
    lines = output.splitlines()
    header = next((i for i, line in enumerate(lines) if line.split() == ["job", "count"]), None)
    if header is None:
        return []  # nothing to be done
    rows = []
    for line in lines[header + 2:]:
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        rows.append((fields[0], int(fields[1])))
    if not rows or rows[-1][0] != "total" or rows[-1][1] != sum(count for _, count in rows[:-1]):
        raise ConfigError("could not read the job table of Snakemake's dry run (snakemake -n --quiet rules)")
    return rows[:-1]


def add_plan_arguments(parser):
    parser.description = ("Runs and finished runs per experiment block, then the jobs a dry run "
                          "(snakemake -n --quiet rules) would start, per rule. Run it from the repository; "
                          "every other option goes to Snakemake, e.g. --profile slurm.")
    parser.add_argument("--configfile", "--configfiles", nargs="+", default=[], metavar="FILE",
                        help=f"workflow config files, merged in order as Snakemake does (default {DEFAULT_CONFIG})")
    parser.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE", help="config values, as Snakemake's")
    parser.add_argument("--directory", "-d", metavar="DIR", help="Snakemake's working directory (default: here)")
    parser.set_defaults(snakemake_args=[])  # limit.cli puts the options it does not know here


def run_plan(args):
    configfiles = args.configfile or [DEFAULT_CONFIG]
    config = merged_config(configfiles, args.config)
    rows = expand_runs(config)
    finished = finished_runs(rows, Path(args.directory or ".", config["results"]))
    packs = pack_runs(rows)
    packed = sum(len(m) for m in packs.values())
    snakemake_args = [*(["--configfile", *args.configfile] if args.configfile else []),
                      *(["--config", *args.config] if args.config else []),
                      *(["--directory", args.directory] if args.directory else []), *args.snakemake_args]
    jobs = snakemake_jobs(snakemake_args)
    print(f"{' '.join(configfiles)}: {len(rows):,} runs in {len(rows) - packed + len(packs):,} training jobs "
          f"({len(packs):,} packs of {packed:,} runs); {len(finished):,} runs finished")
    blocks = Counter((r["experiment"], r["dataset"]) for r in rows)
    done = Counter((r["experiment"], r["dataset"]) for r in rows if r["run_id"] in finished)
    width = max(len(f"{e}/{d}") for e, d in blocks)
    print(f"\n{'block/dataset':<{width}}  {'runs':>7}  {'finished':>8}")
    for (experiment, dataset), count in blocks.items():
        print(f"{experiment + '/' + dataset:<{width}}  {count:>7,}  {done[experiment, dataset]:>8,}")
    print("\njobs left (snakemake -n" + "".join(f" {a}" for a in snakemake_args) + "):")
    for rule, count in jobs or [("nothing to be done", 0)]:
        print(f"  {rule:<20} {count:>7,}" if count else f"  {rule}")
