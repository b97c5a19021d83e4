rule train:
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RUN_DIR}/{METRICS}",
        history=f"{RUN_DIR}/{HISTORY}",
        test_outputs=f"{RUN_DIR}/{TEST_OUTPUTS}",
        model=f"{RUN_DIR}/{BEST}",
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    params:
        # quoted strings, not lists: Snakemake formats every list item of every job (5,000 jobs: seconds)
        settings=lambda wc: shlex.join(train_arguments(RUNS[wc.run])),
        dataset=lambda wc: dataset_argument(RUNS[wc.run]),
        data_dir=data_dir,
        # every attempt's output, kept (Snakemake empties the log of each new attempt)
        attempts=lambda wc: f"{RESULTS}/logs/train/{wc.run}.attempts.log",
        run_dir=lambda wc, output: os.path.dirname(output.metrics),
        init_from=lambda wc, input: (
            shlex.join(["--init-from", os.path.dirname(input.ce_run)]) if "ce_run" in input.keys() else ""
        ),
        # where to track is not what to train: derived from the output, so a changed store retrains nothing
        tracking=lambda wc, output: shlex.join(tracking_arguments(RUNS[wc.run])),
    threads: job_resource("threads")
    priority: training_priority
    resources:
        # sbatch --cpus-per-task: the config's threads, whatever --cores says (Snakemake caps {threads} at the
        # login node's cores, the profile's cores: all; the executor plugin passes cpus_per_task as it is)
        cpus_per_task=job_resource("threads"),
        mem_mb=job_resource("mem_mb", scale_with_attempt=True),
        runtime=train_runtime,
        gpu=job_resource("gpus"),
        # Slurm settings of the dataset (training.<dataset>); unset ones are None, which Snakemake drops
        slurm_partition=job_resource("slurm_partition"),
        slurm_account=job_resource("slurm_account"),
        gpu_model=job_resource("gpu_model"),
        constraint=job_resource("constraint"),
        qos=job_resource("qos"),
    conda:
        "../../envs/train.yaml"
    # in a Slurm job the CPUs it was given ({threads} there is capped at the submitting node's cores); the
    # variables of limit.pack.THREAD_VARIABLES, as a packed run gets them
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} MKL_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} "
        "python -m limit train {params.settings} "
        "--dataset {params.dataset:q} --data-dir {params.data_dir:q} --labels {input.labels:q} {params.init_from} "
        "--out {params.run_dir:q} {params.tracking} 2>&1 | tee -i -a {params.attempts:q} > {log:q}"


# Packed runs (training.<dataset>.pack > 1): one job, one Slurm job, trains its members at the same time, or one
# after another in one process (pack_in_process). Other rules wait for the pack's file, which lists its members
# once all have finished.
rule train_pack:
    input:
        pack_inputs,
    output:
        PACK_FILE,
    log:
        f"{RESULTS}/logs/train/pack_{{pack}}.log",
    params:
        # A digest stands for the members' commands in Snakemake's record: a changed pack reruns, with a
        # one-line reason (the commands themselves are derived from the output, so not compared).
        members=lambda wc: pack_digest(wc.pack),
        runs=lambda wc, output: [run_command(m["run_id"]) for m in PACKS[wc.pack]],
        threads=lambda wc: PACKS[wc.pack][0]["threads"],
        attempts=lambda wc: f"{RESULTS}/logs/train/pack_{wc.pack}.attempts.log",
        # how the members share the job changes no number: derived from the output, so not compared
        in_process=lambda wc, output: "--in-process" if PACKS[wc.pack][0]["pack_in_process"] else "",
    threads: job_resource("threads")
    priority: training_priority
    resources:
        cpus_per_task=job_resource("threads"),
        mem_mb=job_resource("mem_mb", scale_with_attempt=True),
        runtime=train_runtime,
        gpu=job_resource("gpus"),
        slurm_partition=job_resource("slurm_partition"),
        slurm_account=job_resource("slurm_account"),
        gpu_model=job_resource("gpu_model"),
        constraint=job_resource("constraint"),
        qos=job_resource("qos"),
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit train-pack --threads {params.threads} {params.in_process} --out {output:q} {params.runs:q} "
        "2>&1 | tee -i -a {params.attempts:q} > {log:q}"
