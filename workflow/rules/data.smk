rule prepare_data:
    output:
        touch(DATA_READY),
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    params:
        data_dir=config["data_dir"],
        download="--download" if config["download"] else "",
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit prepare --dataset {wildcards.dataset} --data-dir {params.data_dir} "
        "{params.download} > {log} 2>&1"


rule corrupt_labels:
    input:
        lambda wc: DATA_READY.format(dataset=SETTINGS[wc.setting]["dataset"]),
    output:
        LABELS,
    log:
        f"{RESULTS}/logs/labels/{{setting}}.log",
    params:
        # the data setting only: training settings and resources must not redo the labels
        row=lambda wc: {k: SETTINGS[wc.setting][k] for k in ("dataset", "noise", "rate", "n", "seed")},
        data_dir=config["data_dir"],
        val_size=lambda wc: (
            f"--val-size {SETTINGS[wc.setting]['val_size']}"
            if SETTINGS[wc.setting]["val_size"]
            else ""
        ),
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit corrupt --dataset {params.row[dataset]} --data-dir {params.data_dir} "
        "--noise {params.row[noise]} --rate {params.row[rate]} --n {params.row[n]} "
        "--seed {params.row[seed]} {params.val_size} --out {output} > {log} 2>&1"
