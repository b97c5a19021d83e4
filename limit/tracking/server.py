"""A lean local MLflow tracking server (UI + REST API): ``./project ui`` and the MLflow tests use it.

``python -m limit.tracking.server`` starts ``mlflow server`` on a SQLite store bound to 127.0.0.1 with one
worker and the job-execution subsystem off (2 processes, ready in about 8 s, instead of about 15 processes
and 3 GB), waits until ``/health`` answers, prints the URL of each experiment's runs table, and stops the
server (its whole process group) on Ctrl+C or SIGTERM.
"""
import argparse
import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from limit.registry import missing_extra
from limit.tracking.client import SAVED_VIEW
from limit.tracking.uri import DEFAULT_TRACKING_URI, artifacts_beside

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_executable():
    """The ``mlflow`` script of this interpreter's environment (falls back to PATH)."""
    here = Path(sys.executable).parent / "mlflow"
    return str(here) if here.exists() else "mlflow"


def backend_uri(store):
    """A store argument as a backend-store URI: a path becomes ``sqlite:///ABSOLUTE_PATH``."""
    store = str(store)
    if "://" in store:
        return store
    return f"sqlite:///{Path(store).resolve()}"


def serve_command(store, artifacts, host="127.0.0.1", port=5000, workers=1, extra=()):
    """The ``mlflow server`` command line for ``store`` (a path or URI) and an artifact directory."""
    return [mlflow_executable(), "server", "--backend-store-uri", backend_uri(store),
            "--artifacts-destination", str(Path(artifacts).resolve()) if "://" not in str(artifacts)
            else str(artifacts), "--host", host, "--port", str(port), "--workers", str(workers), *extra]


def server_env(base=None):
    env = dict(os.environ if base is None else base)
    env.update(LEAN_ENV)
    return env


def free_port(host="127.0.0.1"):
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def base_url(host, port):
    return f"http://{host}:{port}"


def runs_url(url, experiment_id):
    """The runs table of an experiment in the UI's model-training view, with the pipeline's saved view of it
    (``#/experiments/<id>`` alone lands on the traces overview; ``workflowType`` is the UI's GenAI / model
    training switch)."""
    return f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={SAVED_VIEW}"


def wait_until_ready(url, timeout=90, proc=None):
    """Poll ``url``/health until it answers OK; raise if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"mlflow server at {url} not ready after {timeout} s ({last})")


def start_server(store, artifacts, host="127.0.0.1", port=None, log=None, extra=(), env=None, timeout=90):
    """Start a lean server in its own session (so that ``stop_server`` ends all of it); wait until ready.

    Returns ``(process, url)``. ``log``: a file path for the server's output (default: discarded).
    """
    port = port or free_port(host)
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(serve_command(store, artifacts, host, port, extra=extra), env=server_env(env),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        if log:
            out.close()
    url = base_url(host, port)
    try:
        wait_until_ready(url, timeout, proc)
    except Exception:
        stop_server(proc)
        raise
    return proc, url


def stop_server(proc, timeout=15, sig=signal.SIGTERM):
    """Stop a server started by ``start_server``: its process group (the CLI and its uvicorn worker)."""
    if proc.poll() is None or _group_alive(proc.pid):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def api(url, endpoint, payload=None, **params):
    """Call the server's REST API (``endpoint`` like ``runs/search``): POST ``payload`` as JSON, else GET."""
    import json
    from urllib.parse import urlencode
    target = f"{url}/api/2.0/mlflow/{endpoint}" + (f"?{urlencode(params)}" if params else "")
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(target, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def search_runs(url, experiment_ids, filter_string=""):
    """Every run of the experiments (all pages) as REST JSON objects."""
    runs, token = [], None
    while True:
        payload = {"experiment_ids": list(experiment_ids), "filter": filter_string, "max_results": 1000}
        if token:
            payload["page_token"] = token
        page = api(url, "runs/search", payload)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def sqlite_experiments(store):
    """``[(id, name)]`` of the active experiments of a SQLite store (none if it does not exist yet)."""
    path = Path(store[len("sqlite:///"):] if str(store).startswith("sqlite:///") else store)
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' "
                              "ORDER BY experiment_id").fetchall()
    except sqlite3.Error:
        return []
    return [(str(i), name) for i, name in rows if not (name == "Default" and _is_empty(path, i))]


def _is_empty(path, experiment_id):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM runs WHERE experiment_id = ?", (experiment_id,)).fetchone()[0] == 0


# Every row of the rendered runs table (ag-grid splits pinned and scrolled columns into two row elements):
# cell texts by column id, plus the Run Name cell's nesting (indent in px, whether it has an expander).
_ROWS_JS = """(() => {
  const rows = {};
  for (const row of document.querySelectorAll('.ag-row')) {
    const cells = rows[row.getAttribute('row-index')] ||= {};
    for (const cell of row.querySelectorAll('.ag-cell')) cells[cell.getAttribute('col-id')] = cell.innerText.trim();
    const name = row.querySelector('[col-id="attributes.`Run Name`"]');
    if (name) {
      cells['attributes.`Run Name`'] = name.querySelector('a').innerText;
      cells.indent = parseInt(name.querySelector('[style*="width"]').style.width);
      cells.parent = !!name.querySelector('button[data-component-id$="runnamecellrenderer.tsx_46"]');
    }
  }
  return Object.keys(rows).sort((a, b) => a - b).map(k => rows[k]);
})()"""
_EXPANDERS = "document.querySelectorAll('button[data-component-id$=\"runnamecellrenderer.tsx_46\"]')"


def runs_table(url, experiment_id, expand=None, screenshot=None, width=2100, search=None):
    """Render an experiment's runs table (``runs_url``) in headless Chromium, expand the first ``expand`` parent
    runs (all when None) and return its rows (see ``_ROWS_JS``); ``screenshot``: also save a PNG there;
    ``search``: a filter for the search box (the table is then flat)."""
    from urllib.parse import quote

    from limit.tracking import browser

    async def script(page):
        await page.wait_for("document.querySelectorAll('.ag-row').length > 0")
        await page.evaluate("document.querySelector('button[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
                            "?.click()")
        await page.evaluate(f"Array.from({_EXPANDERS}).slice(0, {'undefined' if expand is None else expand})"
                            ".forEach(b => b.click())")
        rows = None
        while rows != (rows := await page.evaluate(_ROWS_JS)):  # until the table stops changing
            await asyncio.sleep(1)
        if screenshot:
            await page.screenshot(screenshot)
        return rows

    page = runs_url(url, experiment_id) + (f"&searchFilter={quote(search)}" if search else "")
    return browser.run(page, script, width=width)


def _mark_experiments(url, names):
    """Give experiments of an older store the model-training mark and the saved view that ``runs_url`` opens."""
    from mlflow.tracking import MlflowClient

    from limit.tracking.client import get_or_create_experiment
    client = MlflowClient(url)
    for name in names:
        get_or_create_experiment(client, name, url)


def announce_experiments(url, store):
    """Print where each experiment's runs are shown (expanded there); returns the store's (id, name) pairs."""
    experiments = sqlite_experiments(store)
    _mark_experiments(url, [name for _, name in experiments])
    for experiment_id, name in experiments:
        print(f"runs of experiment {name!r}: {runs_url(url, experiment_id)}", flush=True)
    if not experiments:
        print(f"experiments: {url}/#/experiments", flush=True)
    return experiments


def screenshot(url, store, experiments, experiment, png):
    """Save the runs table of one experiment (first parents expanded) as png; the exit status."""
    experiment_id = dict((name, i) for i, name in experiments).get(experiment)
    if experiment_id is None:
        print(f"error: no experiment {experiment!r} in {store}", file=sys.stderr)
        return 2
    rows = runs_table(url, experiment_id, expand=2, screenshot=png)
    print(f"{png}: runs table of {experiment!r}, {len(rows)} rows shown", flush=True)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m limit.tracking.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Other options are passed on to `mlflow server`.")
    default_store = Path(DEFAULT_TRACKING_URI.removeprefix("sqlite:///"))
    p.add_argument("--store", default=default_store, help=f"SQLite file (default: {default_store}, the default "
                                                          f"config's; a config's results: RESULTS has its own)")
    p.add_argument("--artifacts", help="artifact directory (default: mlartifacts beside the store)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 5000))
    p.add_argument("--screenshot", metavar="PNG", help="save the runs table of --experiment (first parents "
                                                       "expanded) there, then stop (needs Debian's chromium)")
    p.add_argument("--experiment", default="main", help="experiment of --screenshot (default: main)")
    args, extra = p.parse_known_args(argv)  # the rest goes to `mlflow server` (e.g. --allowed-hosts ...)
    extra = [a for a in extra if a != "--"]
    problem = args.screenshot and missing_extra("--screenshot", "aiohttp", "browser")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    store = Path(args.store)
    args.artifacts = args.artifacts or artifacts_beside(store)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            s.bind((args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port} ({exc}); choose another port: PORT=5001 ./project ui",
              file=sys.stderr)
        return 1
    if not store.exists():
        print(f"note: {store} does not exist yet (run the pipeline first); the server creates an empty store",
              file=sys.stderr)
    store.parent.mkdir(parents=True, exist_ok=True)
    Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    print(f"starting mlflow server on {store} (artifacts: {args.artifacts}) at {base_url(args.host, args.port)} "
          "...", flush=True)
    proc = subprocess.Popen(serve_command(store, args.artifacts, args.host, args.port, extra=extra),
                            env=server_env(), start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    try:
        url = base_url(args.host, args.port)
        wait_until_ready(url, proc=proc)
        experiments = announce_experiments(url, store)
        if args.screenshot:
            return screenshot(url, store, experiments, args.experiment, args.screenshot)
        print("Ctrl+C stops the server.", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_server(proc)


if __name__ == "__main__":
    sys.exit(main())
