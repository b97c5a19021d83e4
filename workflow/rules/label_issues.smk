rule find_label_issues:
    input:
        done=lambda wc: run_done(wc.run),
    output:
        issues=f"{LABEL_ISSUES}/label_issues.csv",
        gallery=f"{LABEL_ISSUES}/gallery.png",
        summary=f"{LABEL_ISSUES}/summary.json",
    log:
        f"{RESULTS}/logs/label_issues/{{run}}.log",
    params:
        run_dir=lambda wc: run_dir(wc.run),
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m limit find-label-issues {params.run_dir:q} "
        "--out $(dirname {output.issues:q}) > {log:q} 2>&1"


rule label_issues:
    input:
        label_issue_files("label_issues.csv"),
