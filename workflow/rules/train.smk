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
        runtime=train_runtime,
        gpu=run_resource("gpus"),
        # Slurm settings of the dataset (training.<dataset>); unset ones are None, which Snakemake drops
        slurm_partition=run_resource("slurm_partition"),
        slurm_account=run_resource("slurm_account"),
        gpu_model=run_resource("gpu_model"),
        constraint=run_resource("constraint"),
        qos=run_resource("qos"),
    conda:
        "../../envs/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m limit train {params.command} > {log:q} 2>&1"
