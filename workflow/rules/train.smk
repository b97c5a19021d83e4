rule train:
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RESULTS}/runs/{{run}}/metrics.json",
        history=f"{RESULTS}/runs/{{run}}/history.csv",
        test_outputs=f"{RESULTS}/runs/{{run}}/test_outputs.npz",
        model=f"{RESULTS}/runs/{{run}}/best.pt",
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    params:
        command=train_command,
    threads: run_resource("threads")
    resources:
        mem_mb=run_resource("mem_mb", scale_with_attempt=True),
        runtime=run_resource("runtime", scale_with_attempt=True),
        gpu=run_resource("gpus"),
    conda:
        "../../envs/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m limit train {params.command} > {log:q} 2>&1"
