# Stage: TimeStep Master. GORS domain-adaptation data, fostering (one LoRA expert per interval),
# assembling (routers over frozen experts), and the MoE-LoRA baseline.


rule generate_prompt_images:
    input:
        unpack(get_prompt_images_inputs),
    output:
        data=directory(get_prompt_images_dir("{backbone}")),
    params:
        backbone=lambda wc: get_backbone_spec(wc.backbone),
        scorer=lambda wc: get_scorer(wc.backbone),
        gors=config["gors"],
        sampling=lambda wc: get_backbone_sampling(wc.backbone),
        resolution=lambda wc: get_resolution(wc.backbone),
        require_validated=config["evaluation"]["require_validated_evaluator"],
    log:
        get_log("generate_prompt_images", "{backbone}"),
    benchmark:
        get_benchmark("generate_prompt_images", "{backbone}")
    threads: get_threads("generate_prompt_images")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/generate_prompt_images.py"


rule encode_prompt_images:
    input:
        data=get_prompt_images_dir("{backbone}"),
        vae=lambda wc: [] if wc.backbone in REAL_BACKBONES else get_model_dir("vae"),
    output:
        latents=get_task_data("gors", "{backbone}")["latents"],
    params:
        backbone=lambda wc: get_backbone_spec(wc.backbone),
    log:
        get_log("encode_prompt_images", "{backbone}"),
    benchmark:
        get_benchmark("encode_prompt_images", "{backbone}")
    threads: get_threads("encode_prompt_images")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/encode_prompt_images.py"


rule train_expert:
    input:
        unpack(get_expert_inputs),
    output:
        expert=directory(get_expert_dir("{expert_set}", "{interval}")),
    params:
        lora=lambda wc: get_lora_params(ExpertSet.parse(wc.expert_set).backbone),
        backbone=lambda wc: get_backbone_spec(ExpertSet.parse(wc.expert_set).backbone),
    log:
        get_log("train_expert", "{expert_set}", "{interval}"),
    benchmark:
        get_benchmark("train_expert", "{expert_set}", "{interval}")
    threads: get_threads("train_expert")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/train_expert.py"


rule assemble_router:
    input:
        unpack(get_router_inputs),
    output:
        router=directory(get_run_path("{run}", "router")),
    params:
        spec=lambda wc: RUNS[wc.run],
        router=lambda wc: get_router_params(RUNS[wc.run]["backbone"]),
        caption_dropout=lambda wc: get_lora_params(RUNS[wc.run]["backbone"])["caption_dropout"],
        backbone=lambda wc: get_backbone_spec(RUNS[wc.run]["backbone"]),
    log:
        get_log("assemble_router", "{run}"),
    benchmark:
        get_benchmark("assemble_router", "{run}")
    threads: get_threads("assemble_router")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/assemble_router.py"


rule train_moe_lora:
    input:
        unpack(get_moe_inputs),
    output:
        router=directory(get_run_path("{run}", "moe")),
    params:
        spec=lambda wc: RUNS[wc.run],
        lora=config["lora"],
    log:
        get_log("train_moe_lora", "{run}"),
    benchmark:
        get_benchmark("train_moe_lora", "{run}")
    threads: get_threads("train_moe_lora")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/train_moe_lora.py"
