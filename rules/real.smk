# The real DAG: TSM post-pretraining of a paper backbone (the config is config/backbones/<family>.yaml).
# LAION-style data -> cached VAE latents -> one LoRA job per TSM expert (core and context scales) and vanilla
# LoRA -> router (TSM 2-stage) -> FID-30K samples per run -> FID against COCO2014 val -> the table.


rule real_encode_latents:
    output:
        **get_train_data(),
    params:
        spec=LOAD_SPEC,
        data=config["data"]["train"],
    log:
        get_log("real_encode_latents"),
    benchmark:
        get_benchmark("real_encode_latents")
    threads: 8
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/real_encode_latents.py"


rule real_coco_reference:
    output:
        reference=directory(get_coco_reference()),
    params:
        coco=config["data"]["coco"],
        fid=FID_SAMPLING,
    log:
        get_log("real_coco_reference"),
    benchmark:
        get_benchmark("real_coco_reference")
    threads: 4
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/real_coco_reference.py"


rule real_fid_reference_stats:
    input:
        reference=get_coco_reference(),
    output:
        stats=get_coco_reference_stats(),
    params:
        inception_weights=INCEPTION_WEIGHTS,
    log:
        get_log("real_fid_reference_stats"),
    benchmark:
        get_benchmark("real_fid_reference_stats")
    threads: 8
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/real_fid_reference_stats.py"


rule real_train_expert:
    input:
        unpack(get_expert_inputs),
    output:
        expert=directory(get_expert_dir("{expert_set}", "{interval}")),
    params:
        spec=TRAIN_SPEC,
    log:
        get_log("real_train_expert", "{expert_set}", "{interval}"),
    benchmark:
        get_benchmark("real_train_expert", "{expert_set}", "{interval}")
    threads: 8
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/real_train_expert.py"


rule real_assemble_router:
    input:
        unpack(get_router_inputs),
    output:
        router=directory(get_run_path("{run}", "router")),
    params:
        spec=TRAIN_SPEC,
        run=lambda wc: RUNS[wc.run],
    log:
        get_log("real_assemble_router", "{run}"),
    benchmark:
        get_benchmark("real_assemble_router", "{run}")
    threads: 8
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/real_assemble_router.py"


rule real_sample_fid:
    input:
        unpack(get_run_model_inputs),
        reference=get_coco_reference(),
    output:
        images=directory(get_run_path("{run}", "fid_samples")),
    params:
        spec=LOAD_SPEC,
        run=lambda wc: RUNS[wc.run],
        fid=FID_SAMPLING,
    log:
        get_log("real_sample_fid", "{run}"),
    benchmark:
        get_benchmark("real_sample_fid", "{run}")
    threads: 8
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/real_sample_fid.py"


rule real_compute_fid:
    input:
        images=get_run_path("{run}", "fid_samples"),
        reference=get_coco_reference_stats(),
    output:
        fid=get_run_path("{run}", "fid.json"),
    params:
        inception_weights=INCEPTION_WEIGHTS,
    log:
        get_log("real_compute_fid", "{run}"),
    benchmark:
        get_benchmark("real_compute_fid", "{run}")
    threads: 8
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/real_compute_fid.py"


rule real_table:
    input:
        fid=[get_run_path(r, "fid.json") for r in RUNS],
        trained=list(dict.fromkeys(d for r in RUNS for d in get_run_trained_dirs(r))),
    output:
        csv=get_table("csv"),
        md=report(get_table("md"), caption="../report/real_table.rst", category="Tables",
                  labels={"table": "post_pretraining"}),
        tex=get_table("tex"),
    params:
        decl=TABLE,
        runs=RUNS,
        fid={r: get_run_path(r, "fid.json") for r in RUNS},
        trained={r: get_run_trained_dirs(r) for r in RUNS},
    log:
        get_log("real_table"),
    benchmark:
        get_benchmark("real_table")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/real_table.py"
