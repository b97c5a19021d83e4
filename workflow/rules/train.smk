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
        data_dir=config["data_dir"],
        run_dir=lambda wc, output: os.path.dirname(output.metrics),
        init_from=lambda wc, input: (
            shlex.join(["--init-from", os.path.dirname(input.ce_model)]) if "ce_model" in input.keys() else ""
        ),
        tracking=shlex.join(tracking_arguments()),
    threads: run_resource("threads")
    resources:
        mem_mb=run_resource("mem_mb", scale_with_attempt=True),
        runtime=run_resource("runtime", scale_with_attempt=True),
        gpu=run_resource("gpus"),
    conda:
        "../../envs/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m limit train {params.settings} --data-dir {params.data_dir:q} "
        "--labels {input.labels:q} {params.init_from} --out {params.run_dir:q} {params.tracking} > {log} 2>&1"
