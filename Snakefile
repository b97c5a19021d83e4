# limit-pipeline: the LIMIT paper (ICML 2020) and its noisy-label baselines, end to end.
from snakemake.utils import min_version

min_version("9.0")


# The default config, unless config files are given: --configfile config/paper.yaml replaces it instead of
# being merged into it; --config KEY=VALUE alone still edits the default config. (overwrite_configfiles is not
# documented Snakemake: pyproject.toml pins the versions tested.)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/mlflow.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/label_issues.smk"
include: "workflow/rules/report.smk"


# After Snakemake has chosen its executor, before any job: the Slurm checks (again, from the chosen executor: the
# parse-time ones may not have read it), then the MLflow store.
onstart:
    submission_checks(chosen_executor())
    create_mlflow_store()


# A stopped pipeline (a failed job, Ctrl-C) ends with how to go on: printed at exit, after Snakemake's own lines.
onerror:
    atexit.register(print, STOPPED, file=sys.stderr)


rule all:
    input:
        all_outputs(),
    default_target: True
