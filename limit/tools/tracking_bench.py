"""``limit tracking-bench``: the load that N live training runs put on an MLflow server, through the project's own
``Tracker``, and what that load costs the runs.

Each simulated run is a thread that, for ``--seconds``, "trains" one epoch every ``1/R`` s (a sleep) and hands
each epoch's row (the 8 metrics of a CE epoch) to its ``Tracker``, then writes ``history.csv`` and
``metrics.json`` and calls ``Tracker.finish``, as ``limit train`` does. The runs are spread over a few processes
(a job is a process; importing MLflow costs each about 250 MB). Every MLflow client call is timed.

It prints the requests per second during the runs, the latency percentiles of each kind of request (the start-up
burst is the ``create_run`` and ``get_run`` rows), the share of each run's wall time spent in the Tracker's
``start`` and ``log_epoch`` calls (the training loop's share: mean and worst run) and its longest single call, the
time ``finish`` took and how many failed, and the epoch metrics sent against those found in the store afterwards
(lost must be 0 where no finish failed).
"""
import csv
import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

from limit.runs import rundir
from limit.tracking.client import LIVE_INTERVAL, Tracker, _client
from limit.tracking.uri import TRACKING_URI_HELP, redact, tracking_uri

EPOCH_METRICS = (rundir.TRAIN_LOSS, rundir.TRAIN_ACC, rundir.TRAIN_ACC_TRUE, rundir.TRAIN_ACC_CORRUPTED,
                 rundir.VAL_ACC, rundir.TEST_ACC, rundir.EPOCH_SECONDS, rundir.IMAGES_PER_SECOND)  # a CE epoch's
# MLflow client calls the Tracker makes, timed in each process
CALLS = ("create_run", "get_run", "search_runs", "log_batch", "update_run", "set_terminated", "get_metric_history",
         "log_artifact", "list_artifacts", "get_experiment_by_name", "create_experiment", "set_experiment_tag",
         "delete_run")


def add_tracking_bench_arguments(parser):
    parser.add_argument("--uri", dest="tracking_uri", help=TRACKING_URI_HELP + " (without a password)")
    parser.add_argument("--runs", type=int, default=16, help="simulated live runs, all at once")
    parser.add_argument("--epochs-per-second", type=float, default=10.0, help="each run's epoch rate")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each run trains")
    parser.add_argument("--interval", type=float, default=LIVE_INTERVAL, help="the runs' mlflow.live_interval")
    parser.add_argument("--processes", type=int, default=4, help="processes the runs are spread over")
    parser.add_argument("--experiment", default="tracking-bench", help="MLflow experiment of the simulated runs")


def run_config(experiment, index):
    """A run's config.json as training writes it (one CE run per seed, so each run has its own name)."""
    return {"method": "ce", "dataset": "mnist", "arch": "cnn", "seed": index, "clean_validation": False,
            "hparams": {}, "epochs": 100000, "batch_size": 128,
            "run": {"experiment": experiment, "variant": "ce", "hparams": [], "noise": "uniform", "rate": 0.5,
                    "n": "1000"}}


def _timed_calls(log):
    """Time every MLflow client call of this process into ``log``: (call, wall-clock start, seconds)."""
    from mlflow.tracking import MlflowClient

    def timed(name, method):
        def call(self, *args, **kwargs):
            began, t0 = time.time(), time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                log.append((name, began, time.perf_counter() - t0))
        return call
    for name in CALLS:
        setattr(MlflowClient, name, timed(name, getattr(MlflowClient, name)))


def simulate_run(run_dir, uri, index, args, start_at, results):
    """One run: epochs at the given rate until ``args.seconds`` after ``start_at`` (read every epoch, so a caller
    may move the end), through a Tracker; its timings into ``results``."""
    config = run_config(args.experiment, index)
    run_dir.mkdir(parents=True)
    rundir.write_json(run_dir / rundir.CONFIG, config)
    rundir.write_json(run_dir / rundir.JOB, {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    tracker = Tracker(run_dir, uri, interval=args.interval)
    t0 = time.perf_counter()
    tracker.start(config, [])
    in_tracking = worst = time.perf_counter() - t0
    history, period = [], 1 / args.epochs_per_second
    while time.time() - start_at < args.seconds:
        time.sleep(max(0.0, start_at + (len(history) + 1) * period - time.time()))  # the epoch's training
        row = {rundir.EPOCH: len(history), **{k: 0.5 + len(history) / 1e6 for k in EPOCH_METRICS}}
        t0 = time.perf_counter()
        tracker.log_epoch(row)
        call = time.perf_counter() - t0
        in_tracking, worst = in_tracking + call, max(worst, call)
        history.append(row)
    wall = time.time() - start_at
    with open(run_dir / rundir.HISTORY, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[rundir.EPOCH, *EPOCH_METRICS])
        writer.writeheader()
        writer.writerows(history)
    rundir.write_json(run_dir / rundir.METRICS, {rundir.TEST_ACC: 0.5, rundir.EPOCHS_RUN: len(history)})
    t0 = time.perf_counter()
    synced = tracker.finish(run_dir)
    results.append({"run_dir": str(run_dir), "epochs": len(history), "wall": wall, "in_tracking": in_tracking,
                    "worst_call": worst, "finish": time.perf_counter() - t0, "synced": synced})


def _process(indices, work, uri, args, barrier, out):
    """A process's share of the runs, started together with the other processes' (``barrier``)."""
    calls, results = [], []
    _client(uri)  # import MLflow before the clock starts
    _timed_calls(calls)
    barrier.wait(timeout=600)
    start_at = time.time()
    threads = [threading.Thread(target=simulate_run, args=(Path(work) / f"run{i}", uri, i, args, start_at, results))
               for i in indices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put({"calls": calls, "runs": results, "start": start_at})


def _percentiles(values):
    values = sorted(values)
    return {p: values[min(len(values) - 1, int(p / 100 * len(values)))] for p in (50, 90, 99, 100)}


def _found(client, run_dirs):
    """(epoch metric points found, duplicates) in the store for the runs' MLflow runs."""
    found = duplicates = 0
    for run_dir in run_dirs:
        run_id = rundir.read_mlflow(run_dir).get("run_id")
        for key in EPOCH_METRICS if run_id else ():
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            found, duplicates = found + len(set(steps)), duplicates + len(steps) - len(set(steps))
    return found, duplicates


def run_tracking_bench(args):
    uri = tracking_uri(args.tracking_uri)
    _client(uri).search_experiments(max_results=1)  # the store answers (an SQLite one is created once, here)
    context = multiprocessing.get_context("spawn")
    processes = max(1, min(args.processes, args.runs))
    barrier, out = context.Barrier(processes), context.Queue()
    with tempfile.TemporaryDirectory(prefix="limit-tracking-bench-") as work:
        workers = [context.Process(target=_process, args=(list(range(p, args.runs, processes)), work, uri, args,
                                                           barrier, out)) for p in range(processes)]
        for worker in workers:
            worker.start()
        parts = [out.get() for _ in workers]
        for worker in workers:
            worker.join()
        runs = [r for part in parts for r in part["runs"]]
        calls = [c for part in parts for c in part["calls"]]
        start = min(part["start"] for part in parts)
        sent = sum(r["epochs"] for r in runs) * len(EPOCH_METRICS)
        found, duplicates = _found(_client(uri), [r["run_dir"] for r in runs])
    during = [c for c in calls if c[1] < start + args.seconds]
    shares = [r["in_tracking"] / r["wall"] for r in runs]
    print(f"tracking-bench: {args.runs} runs x {args.epochs_per_second:g} epochs/s x {args.seconds:g} s against "
          f"{redact(uri)}, live_interval {args.interval:g} s, {processes} processes")
    print(f"epochs: {sum(r['epochs'] for r in runs)} of {int(args.runs * args.epochs_per_second * args.seconds)} "
          f"planned")
    print(f"requests during the runs: {len(during)} ({len(during) / args.seconds:.1f}/s); all: {len(calls)}")
    for name in sorted({c[0] for c in calls}):
        latency = _percentiles([c[2] for c in calls if c[0] == name])
        print(f"  {name:22s} {sum(c[0] == name for c in calls):6d} calls, latency ms p50 {latency[50] * 1e3:7.1f} "
              f"p90 {latency[90] * 1e3:7.1f} p99 {latency[99] * 1e3:7.1f} max {latency[100] * 1e3:7.1f}")
    print(f"training loop's time in tracking: mean {100 * sum(shares) / len(shares):.3f} %, worst run "
          f"{100 * max(shares):.3f} %; longest call {max(r['worst_call'] for r in runs) * 1e3:.1f} ms")
    print(f"finish (flush and final sync): mean {sum(r['finish'] for r in runs) / len(runs):.2f} s, "
          f"max {max(r['finish'] for r in runs):.2f} s; failed {sum(not r['synced'] for r in runs)} (their runs "
          f"lack what the sync would have added)")
    print(f"epoch metrics: sent {sent}, found {found}, lost {sent - found}, duplicates {duplicates}")
    print(json.dumps({"runs": args.runs, "requests_per_second": round(len(during) / args.seconds, 2),
                      "tracking_share_mean": sum(shares) / len(shares), "tracking_share_max": max(shares),
                      "sent": sent, "found": found, "lost": sent - found}))
