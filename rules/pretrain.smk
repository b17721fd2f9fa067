# Stage: pre-training of the three miniature denoisers ("the pre-trained models"), and their samples.


rule pretrain_base:
    input:
        unpack(get_pretrain_inputs),
    output:
        model=directory(get_base_dir("{backbone}")),
    params:
        cfg=lambda wc: config["backbones"][wc.backbone],
    log:
        get_log("pretrain_base", "{backbone}"),
    benchmark:
        get_benchmark("pretrain_base", "{backbone}")
    threads: get_threads("pretrain_base")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/pretrain_base.py"


rule sample_base_grid:
    input:
        model=get_base_dir("{backbone}"),
        vae=get_model_dir("vae"),
        text_encoder=get_model_dir("text_encoder"),
        prompts=[f for k, f in get_compbench_files().items() if k.endswith("_val")],
    output:
        grid=report(
            f"{RESULTS}/samples/base/{{backbone}}.png",
            caption="../report/base_samples.rst",
            category="Foundation",
            subcategory="Sample grids",
            labels={"backbone": "{backbone}"},
        ),
    params:
        sampling=config["sampling"],
    log:
        get_log("sample_base_grid", "{backbone}"),
    benchmark:
        get_benchmark("sample_base_grid", "{backbone}")
    threads: get_threads("sample_base_grid")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/sample_grid.py"
