rule report:
    input:
        runs=RUNS_CSV,
    # update: Snakemake neither empties these before the job nor removes them if it fails (it restores them);
    # `limit report` renders beside them and swaps them in only when every table and figure is written.
    output:
        tables=report(
            update(directory(f"{RESULTS}/tables")),
            patterns=["{name}.html"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        figures=report(
            update(directory(f"{RESULTS}/figures")),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        data_dir=data_dir,
        facts=figure_facts(RUN_ROWS),  # for the figure captions
    # the pipeline's last job, with the cores to itself: its figures two at a time (capped at --cores)
    threads: 2
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m limit report --runs {input.runs:q} --tables {output.tables:q} "
        "--figures {output.figures:q} --data-dir {params.data_dir:q} --jobs {threads} > {log:q} 2>&1"


rule readme_figures:
    input:
        f"{RESULTS}/figures",
    output:
        expand("docs/img/{name}", name=README_FIGURES),
    log:
        f"{RESULTS}/logs/readme_figures.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "for f in {output:q}; do cp {input:q}/\"$(basename \"$f\")\" \"$f\"; done > {log:q} 2>&1"
