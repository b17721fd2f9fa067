# Stage: the shapes world. Rendered splits, CompBench-mini prompt files, a coverage note.


rule render_dataset:
    output:
        split=directory(f"{RESULTS}/data/{{split}}"),
    params:
        n=lambda wc: config["data"][wc.split]["n"],
        seed=lambda wc: config["data"][wc.split]["seed"],
        data=config["data"],
        resolution=config["resolution"],
    log:
        get_log("render_dataset", "{split}"),
    benchmark:
        get_benchmark("render_dataset", "{split}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/render_dataset.py"


rule make_compbench_prompts:
    output:
        **get_compbench_files(),
    params:
        compbench=config["compbench"],
        data=config["data"],
    log:
        get_log("make_compbench_prompts"),
    benchmark:
        get_benchmark("make_compbench_prompts")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/make_compbench_prompts.py"


rule data_coverage:
    input:
        data=get_split_dir("train"),
        prompts=list(get_compbench_files().values()),
    output:
        report(f"{RESULTS}/data/coverage.md", caption="../report/coverage.rst", category="Data"),
    params:
        rare_pairs=config["data"]["rare_pairs"],
    log:
        get_log("data_coverage"),
    benchmark:
        get_benchmark("data_coverage")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/data_coverage.py"


# the class-conditional world's splits (DMP Tables 8-9): one object per image, captioned with its class
use rule render_dataset as render_classes with:
    output:
        split=directory(f"{RESULTS}/data/classes_{{split}}"),
    params:
        n=lambda wc: config["classes"][wc.split]["n"],
        seed=lambda wc: config["classes"][wc.split]["seed"],
        data=CLASS_WORLD,
        resolution=config["resolution"],
    log:
        get_log("render_classes", "{split}"),
    benchmark:
        get_benchmark("render_classes", "{split}")


# COCO2014 val for a paper model's FID (config `coco`): n_reference images, cropped and resized, and their captions
rule coco_reference:
    output:
        reference=directory(get_coco_reference()),
    params:
        coco=config.get("coco"),
        n_samples=config["evaluation"]["fid"]["n_samples"],
    log:
        get_log("coco_reference"),
    benchmark:
        get_benchmark("coco_reference")
    threads: get_threads("coco_reference")
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/coco_reference.py"
