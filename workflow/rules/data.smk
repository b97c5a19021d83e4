rule prepare_data:
    output:
        touch(DATA_READY),
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    params:
        data_dir=data_dir,
        download="--download" if config["download"] else "",
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit prepare --dataset {wildcards.dataset:q} --data-dir {params.data_dir:q} "
        "{params.download} > {log:q} 2>&1"


rule import_images:
    input:
        image_sources,
    output:
        info=f"{IMAGE_DATASET}/dataset.json",
        images=f"{IMAGE_DATASET}/images.npz",
    log:
        f"{RESULTS}/logs/import_images/{{name}}.log",
    wildcard_constraints:
        name="[A-Za-z0-9_-]+",
    params:
        args=import_arguments,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit import-images {params.args:q} --out \"$(dirname {output.info:q})\" > {log:q} 2>&1"


rule corrupt_labels:
    input:
        lambda wc: data_ready(SETTINGS[wc.setting]["dataset"]),
    output:
        LABELS,
    log:
        f"{RESULTS}/logs/labels/{{setting}}.log",
    params:
        # the data setting only: training settings and resources must not redo the labels
        row=lambda wc: {
            "dataset": dataset_argument(SETTINGS[wc.setting]),
            **{k: SETTINGS[wc.setting][k] for k in ("noise", "rate", "n", "seed")},
        },
        data_dir=data_dir,
        val_size=lambda wc: (
            ["--val-size", SETTINGS[wc.setting]["val_size"]] if SETTINGS[wc.setting]["val_size"] else []
        ),
    priority: PRIORITY_LABELS
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m limit corrupt --dataset {params.row[dataset]:q} --data-dir {params.data_dir:q} "
        "--noise {params.row[noise]:q} --rate {params.row[rate]:q} --n {params.row[n]:q} "
        "--seed {params.row[seed]:q} {params.val_size:q} --out {output:q} > {log:q} 2>&1"
