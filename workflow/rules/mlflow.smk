# The MLflow store, its experiments and the parent runs of the selection groups that have a run to train, made
# once before any job starts (parallel jobs would race to create them). Called by the Snakefile's onstart, not a
# rule: no job waits for it, so a changed config gets all its new jobs in one invocation, and a dry run leaves
# the store alone.
def create_mlflow_runs():
    groups = pending_groups() if TRACKING else []
    if groups:
        os.makedirs(os.path.dirname(MLFLOW_INIT_LOG), exist_ok=True)
        command = ["python", "-m", "limit", "mlflow-init", *TRACKING_URI_ARGS, "--groups", *groups]
        try:
            shell(f"{shlex.join(command)} > {shlex.quote(MLFLOW_INIT_LOG)} 2>&1")
        except Exception:  # a job never fails because of tracking: each one retries, mlflow-sync catches up
            print(f"warning: MLflow parent runs not created (see {MLFLOW_INIT_LOG}); the jobs go on and "
                  f"record their runs on disk", file=sys.stderr)
