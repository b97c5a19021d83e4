rule train:
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        history=f"{RUN_DIR}/history.csv",
        test_outputs=f"{RUN_DIR}/test_outputs.npz",
        model=f"{RUN_DIR}/best.pt",
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    params:
        # quoted strings, not lists: Snakemake formats every list item of every job (5,000 jobs: seconds)
        settings=lambda wc: shlex.join(train_arguments(RUNS[wc.run])),
        dataset=lambda wc: dataset_argument(RUNS[wc.run]),
        data_dir=config["data_dir"],
        run_dir=lambda wc, output: os.path.dirname(output.metrics),
        init_from=lambda wc, input: (
            shlex.join(["--init-from", os.path.dirname(input.ce_run)]) if "ce_run" in input.keys() else ""
        ),
        tracking=shlex.join(tracking_arguments()),
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
        "OMP_NUM_THREADS={threads} python -m limit train {params.settings} --dataset {params.dataset:q} "
        "--data-dir {params.data_dir:q} --labels {input.labels:q} {params.init_from} --out {params.run_dir:q} "
        "{params.tracking} > {log:q} 2>&1"


# Packed runs (training.<dataset>.pack > 1): one job, one Slurm job, trains its members at the same time.
for pack, members in PACKS.items():

    rule:
        name:
            f"train_pack_{pack}"
        input:
            pack_inputs(members),
        # Other rules depend on a run's metrics.json, written last (best.pt and the rest exist once it does). A
        # pack declares only that file of each member: Snakemake compiles a regular expression for every declared
        # file, and four per member made the paper DAG's dry run take 21 s instead of 13 s (measured).
        output:
            [os.path.join(run_dir(m["run_id"]), "metrics.json") for m in members],
        log:
            f"{RESULTS}/logs/train/pack_{pack}.log",
        params:
            runs=[run_command(m["run_id"]) for m in members],
            threads=members[0]["threads"],
        threads: sum(m["threads"] for m in members) + 1  # and one for the pack process itself
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
