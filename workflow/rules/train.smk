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


# Packed runs (training.<dataset>.pack > 1): one job, one Slurm job, trains its members at the same time.
for pack, members in PACKS.items():

    rule:
        name:
            f"train_pack_{pack}"
        input:
            pack_inputs(members),
        output:
            [f"{m['run_dir']}/{name}" for m in members for name in RUN_OUTPUTS],
        log:
            f"{RESULTS}/logs/train/pack_{pack}.log",
        params:
            runs=[run_command(m["run_id"]) for m in members],
            threads=members[0]["threads"],
        threads: sum(m["threads"] for m in members)
        resources:
            mem_mb=pack_resource(members, "mem_mb"),
            runtime=pack_resource(members, "runtime"),
            gpu=pack_resource(members, "gpus"),
            slurm_partition=pack_setting(members, "slurm_partition"),
            slurm_account=pack_setting(members, "slurm_account"),
            gpu_model=pack_setting(members, "gpu_model"),
            constraint=pack_setting(members, "constraint"),
            qos=pack_setting(members, "qos"),
        conda:
            "../../envs/train.yaml"
        shell:
            "python -m limit train-pack --threads {params.threads} {params.runs:q} > {log:q} 2>&1"
