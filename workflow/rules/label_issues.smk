rule find_label_issues:
    input:
        metrics=f"{RUN_DIR}/metrics.json",  # written last: best.pt is there
    output:
        issues=f"{LABEL_ISSUES}/label_issues.csv",
        gallery=f"{LABEL_ISSUES}/gallery.png",
        summary=f"{LABEL_ISSUES}/summary.json",
    log:
        f"{RESULTS}/logs/label_issues/{{run}}.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m limit find-label-issues $(dirname {input.metrics:q}) "
        "--out $(dirname {output.issues:q}) > {log:q} 2>&1"


rule label_issues:
    input:
        label_issue_files("label_issues.csv"),
