# The MLflow store, made once before any job starts (parallel jobs would race in a new SQLite file's schema
# migration). Experiments and parent runs come with the first run of each that reaches MLflow, so a command that
# trains nothing (a data download) creates none. Called by the Snakefile's onstart, not a rule: no job waits for
# it, and a dry run leaves the store alone.
def create_mlflow_store():
    if TRACKING and pending_groups():
        os.makedirs(os.path.dirname(MLFLOW_INIT_LOG), exist_ok=True)
        command = ["python", "-m", "limit", "mlflow-init", *TRACKING_URI_ARGS]
        try:
            shell(f"{shlex.join(command)} > {shlex.quote(MLFLOW_INIT_LOG)} 2>&1")
        except Exception:  # a job never fails because of tracking: each one retries, mlflow-sync catches up
            print(f"warning: MLflow store not reached (see {MLFLOW_INIT_LOG}); the jobs go on and "
                  f"record their runs on disk", file=sys.stderr)
