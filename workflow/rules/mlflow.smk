rule mlflow_init:
    output:
        EXPERIMENTS_FILE,
    log:
        f"{RESULTS}/logs/mlflow_init.log",
    params:
        uri=TRACKING_URI_ARGS,
        experiments=EXPERIMENTS,
        groups=list(GROUPS),
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit mlflow-init {params.uri:q} --experiments {params.experiments:q} "
        "--groups {params.groups:q} --out {output:q} > {log:q} 2>&1"
