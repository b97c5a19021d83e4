rule mlflow_init:
    output:
        EXPERIMENTS_FILE,
    log:
        f"{RESULTS}/logs/mlflow_init.log",
    params:
        uri=TRACKING_URI,
        experiments=EXPERIMENTS,
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit mlflow-init --tracking-uri {params.uri:q} --experiments {params.experiments:q} "
        "--out {output} > {log} 2>&1"
