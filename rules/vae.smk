# Stage: the miniature's AutoencoderKL, the cached training latents and the VAE's reconstruction error.


rule train_vae:
    input:
        data=get_split_dir("train"),
    output:
        model=directory(get_model_dir("vae")),
    params:
        cfg=config["vae"],
    log:
        get_log("train_vae"),
    benchmark:
        get_benchmark("train_vae")
    threads: get_threads("train_vae")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/train_vae.py"


rule encode_latents:
    input:
        data=get_split_dir("train"),
        vae=get_model_dir("vae"),
    output:
        latents=f"{RESULTS}/data/train_latents.safetensors",
    log:
        get_log("encode_latents"),
    benchmark:
        get_benchmark("encode_latents")
    threads: get_threads("encode_latents")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/encode_latents.py"


rule evaluate_vae:
    input:
        data=get_split_dir("reference"),
        vae=get_model_dir("vae"),
    output:
        metrics=f"{RESULTS}/vae/reconstruction.json",
        figure=report(f"{RESULTS}/vae/reconstruction.png", caption="../report/vae.rst", category="Foundation"),
    params:
        eval_n=config["vae"]["eval_n"],
    log:
        get_log("evaluate_vae"),
    benchmark:
        get_benchmark("evaluate_vae")
    threads: get_threads("evaluate_vae")
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/evaluate_vae.py"


use rule encode_latents as encode_classes_latents with:
    input:
        data=get_split_dir("classes_train"),
        vae=get_model_dir("vae"),
    output:
        latents=f"{RESULTS}/data/classes_train_latents.safetensors",
    log:
        get_log("encode_classes_latents"),
    benchmark:
        get_benchmark("encode_classes_latents")


# a paper model's post-pretraining data (config backbones.<name>.data), encoded once by its own VAE
rule encode_image_text:
    output:
        latents=get_image_text_data("{backbone}")["latents"],
        data=directory(get_image_text_data("{backbone}")["data"]),
    wildcard_constraints:
        backbone="|".join(REAL_BACKBONES) or "(?!)",
    params:
        spec=lambda wc: get_backbone_spec(wc.backbone),
        data=lambda wc: config["backbones"][wc.backbone]["data"],
    log:
        get_log("encode_image_text", "{backbone}"),
    benchmark:
        get_benchmark("encode_image_text", "{backbone}")
    threads: get_threads("encode_image_text")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/encode_image_text.py"
