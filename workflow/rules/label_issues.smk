rule find_label_issues:
    input:
        done=lambda wc: sorted({run_done(run) for run in LABEL_ISSUE_RANKINGS[wc.ranking]}),
    output:
        issues=f"{LABEL_ISSUES}/label_issues.csv",
        gallery=f"{LABEL_ISSUES}/gallery.png",
        summary=f"{LABEL_ISSUES}/summary.json",
    log:
        f"{RESULTS}/logs/label_issues/{{ranking}}.log",
    params:
        # the variant's grid at this setting and seed: find-label-issues ranks with the run noisy validation selects
        run_dirs=lambda wc: [run_dir(run) for run in LABEL_ISSUE_RANKINGS[wc.ranking]],
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m limit find-label-issues {params.run_dirs:q} "
        "--out \"$(dirname {output.issues:q})\" > {log:q} 2>&1"


rule label_issues:
    input:
        label_issue_files("label_issues.csv"),
