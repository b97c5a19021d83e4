rule select:
    input:
        lambda wc: [f"{d}/metrics.json" for d in group_run_dirs(wc)],
    output:
        f"{RESULTS}/selected/{{group}}.json",
    log:
        f"{RESULTS}/logs/select/{{group}}.log",
    params:
        run_dirs=group_run_dirs,
        tracking=[] if TRACKING else ["--no-tracking"],
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit select {params.tracking:q} --out {output:q} {params.run_dirs:q} > {log:q} 2>&1"


rule aggregate:
    input:
        expand(f"{RESULTS}/selected/{{group}}.json", group=GROUPS),
    output:
        runs=f"{RESULTS}/runs.csv",
        selected=f"{RESULTS}/selected.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit aggregate --out-runs {output.runs:q} --out-selected {output.selected:q} "
        "--selections {input:q} > {log:q} 2>&1"
