rule select:
    input:
        block_runs_done,
    output:
        directory(SELECTIONS),
    log:
        f"{RESULTS}/logs/select/{{block}}.log",
    params:
        # derived from the input (so not compared by Snakemake: a changed block changes the input files)
        run_dirs=lambda wc, input: [run_dir(r["run_id"]) for r in block_runs(wc.block)],
        # the select job puts its block's runs into MLflow (all of them unless mlflow.live); like the train
        # rule's, derived from the output, so a changed store reruns nothing
        tracking=lambda wc, output: TRACKING_URI_ARGS if TRACKING else ["--no-tracking"],
    wildcard_constraints:
        block="[^/]+",
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit select {params.tracking:q} --out-dir \"$(dirname {output:q})\" {params.run_dirs:q} > {log:q} 2>&1"


rule aggregate:
    input:
        expand(SELECTIONS, block=BLOCKS),
    output:
        runs=RUNS_CSV,
        selected=SELECTED_CSV,
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        figure1=FIGURE1_EXPERIMENTS,
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit aggregate --out-runs {output.runs:q} --out-selected {output.selected:q} "
        "--figure1-experiments {params.figure1:q} --selections {input:q} > {log:q} 2>&1"
