# Stage: the miniature's CLIP text encoder (trained contrastively, then frozen and shared).


rule train_text_encoder:
    input:
        data=get_split_dir("train"),
    output:
        model=directory(get_model_dir("text_encoder")),
    params:
        cfg=config["text_encoder"],
    log:
        get_log("train_text_encoder"),
    benchmark:
        get_benchmark("train_text_encoder")
    threads: get_threads("train_text_encoder")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/train_text_encoder.py"
