"""Command line: ``limit COMMAND ...`` (or ``python -m limit``); every workflow rule calls one of these.

COMMANDS is the dispatch table. Each command's ``add_<name>_arguments(parser)`` and ``run_<name>(args)`` live beside
its code, and a command's module is imported only to run it or show its help, so that ``limit --help`` answers at
once.
"""
import argparse
import importlib
import importlib.util
import sys
import warnings

from limit.config import TrainingError
from limit.registry import missing_extra, unknown_name
from limit.tracking.uri import check_no_password, redact

# name: (the module that holds the command, one-line help)
COMMANDS = {
    "prepare": ("limit.datasets.standard", "check (or download) a dataset's files"),
    "import-images": ("limit.datasets.images", "check your own images and decode them once into a dataset cache"),
    "corrupt": ("limit.labels", "split and corrupt the labels of one data setting into a labels file"),
    "train": ("limit.train", "train one run (exactly as the workflow does)"),
    "train-pack": ("limit.pack", "train several runs in one job: at the same time (a GPU) or in one process"),
    "select": ("limit.report.selection", "select the hyperparameters of one setting and method variant"),
    "aggregate": ("limit.report.selection", "one table of all runs, selected configurations marked"),
    "report": ("limit.report.render", "render the tables and figures from the run table"),
    "mlflow-sync": ("limit.tracking.client", "put run directories into MLflow (idempotent)"),
    "mlflow-init": ("limit.tracking.client", "create the MLflow store (and --groups' experiments and parent runs)"),
    "plan": ("limit.runs.plan", "what a config asks for and what is left of it, on one screen"),
    "cost": ("limit.tools.cost", "device-hours of a config's grid on this device, packed and unpacked"),
    "bench": ("limit.tools.bench", "images/s of training steps on this device"),
    "find-label-issues": ("limit.tools.label_issues",
                          "rank the labelled examples of a run by how likely their labels are wrong"),
    "tracking-bench": ("limit.tools.tracking_bench",
                       "the load N live runs put on an MLflow server, and its cost to them"),
    "detect-bench": ("limit.tools.detect_bench", "mislabel detection on Fashion-MNIST: LIMIT vs cleanlab vs CE loss"),
}
# Where a command's options live when not in its module: train's are the field table's (torch-free, so
# `limit train --help` answers at once).
ARGUMENTS = {"train": "limit.config"}
# Commands that need an optional dependency: command -> (its module, the extra of pyproject.toml that installs it)
NEEDS = {"detect-bench": ("cleanlab", "detect")}


def _function(module, prefix, command):
    return getattr(importlib.import_module(module), f"{prefix}{command.replace('-', '_')}")


class Formatter(argparse.HelpFormatter):
    """Help that shows an option's default, where it has one that its help does not already give."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Bad arguments: one line ``error: ...`` and exit status 2, as every other bad input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=Formatter, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(command=None):
    """The ``limit`` parser; with ``command``, that command's options too (importing only its module)."""
    parser = Parser(prog="limit", description="The commands of limit-pipeline; every workflow rule calls one of them.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=text, description=text)
        if name == command:
            _function(ARGUMENTS.get(name, module), "add_", name + "_arguments")(command_parser)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        print(f"error: limit: {unknown_name('command', command, COMMANDS)} (see limit --help)", file=sys.stderr)
        return 2
    parser = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not hasattr(args, "snakemake_args"):
        parser.parse_args(argv)  # the one-line error naming them
    if unknown:
        args.snakemake_args = [*args.snakemake_args, *unknown]  # a command that passes them on (plan)
    problem = args.command in NEEDS and missing_extra(f"limit {args.command}", *NEEDS[args.command])
    if problem:
        print(problem, file=sys.stderr)
        return 2
    warnings.simplefilter("default", RuntimeWarning)
    try:
        check_no_password(getattr(args, "tracking_uri", None), "--tracking-uri")
        _function(COMMANDS[args.command][0], "run_", args.command)(args)
    except (ValueError, TrainingError, FileNotFoundError) as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line instead of a traceback (a run keeps its last checkpoint)
        print(f"limit {args.command}: interrupted; the same command again goes on from where it stopped",
              file=sys.stderr)
        return 130
    return 0
