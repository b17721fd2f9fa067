# Stage: distillation (DMD2's few-step students, WaDi's one-step VSD): a pre-trained teacher into a student with
# its own adapter (full, lora, dora, lorad), image-free: prompts only. One job per student.


rule distill_student:
    input:
        unpack(get_student_inputs),
    output:
        model=directory(get_student_dir("{student}")),
    params:
        student=lambda wc: STUDENTS[wc.student],
        backbone=lambda wc: get_backbone_spec(STUDENTS[wc.student]["backbone"]),
        distill=config.get("distill"),
    log:
        get_log("distill_student", "{student}"),
    benchmark:
        get_benchmark("distill_student", "{student}")
    threads: get_threads("distill_student")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/distill_student.py"


rule plot_weight_change:
    input:
        unpack(get_table_student_dirs),
    output:
        plot=report(
            f"{RESULTS}/plots/{{table}}_weight_change.png",
            caption="../report/weight_change.rst",
            category="Plots",
            subcategory="Distillation",
            labels={"table": "{table}", "plot": "weight change per layer"},
        ),
    params:
        labels=lambda wc: get_table_students(wc.table),
        title=lambda wc: TABLES[wc.table]["title"],
    log:
        get_log("plot_weight_change", "{table}"),
    benchmark:
        get_benchmark("plot_weight_change", "{table}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_weight_change.py"
