# Stage: further training of a pre-trained denoiser on its own data (DMP's post-pretraining comparison):
# full fine-tuning, prompt tuning and DMP's mixture-of-prompts, with snapshots for FID over iterations.


rule train_full:
    input:
        unpack(get_finetune_inputs),
    output:
        model=directory(get_finetune_dir("{finetune}")),
    wildcard_constraints:
        finetune="|".join(re.escape(f) for f, d in FINETUNES.items() if d["method"] == "full") or "none",
    params:
        finetune=lambda wc: FINETUNES[wc.finetune],
        # only this method's defaults: a change to the other method's settings does not rerun these jobs
        defaults=lambda wc: {k: config["finetune"][k] for k in ("caption_dropout", "full")},
        backbone=lambda wc: get_backbone_spec(FINETUNES[wc.finetune]["backbone"]),
    log:
        get_log("train_full", "{finetune}"),
    benchmark:
        get_benchmark("train_full", "{finetune}")
    threads: get_threads("train_full")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/train_finetune.py"


use rule train_full as train_dmp with:
    wildcard_constraints:
        finetune="|".join(re.escape(f) for f, d in FINETUNES.items() if d["method"] == "dmp") or "none",
    params:
        finetune=lambda wc: FINETUNES[wc.finetune],
        defaults=lambda wc: {k: config["finetune"][k] for k in ("caption_dropout", "dmp")},
        backbone=lambda wc: get_backbone_spec(FINETUNES[wc.finetune]["backbone"]),
    log:
        get_log("train_dmp", "{finetune}"),
    benchmark:
        get_benchmark("train_dmp", "{finetune}")
    threads: get_threads("train_dmp")


# DMP Table 6: a denoiser trained from scratch, with DMP attached from the start (`with_dmp`) or without
use rule train_full as train_scratch with:
    input:
        unpack(get_scratch_inputs),
    wildcard_constraints:
        finetune="|".join(re.escape(f) for f, d in FINETUNES.items() if d["method"] == "scratch") or "none",
    params:
        finetune=lambda wc: FINETUNES[wc.finetune],
        defaults=lambda wc: {k: config["finetune"][k] for k in ("caption_dropout", "scratch")},
        backbone=lambda wc: get_backbone_spec(FINETUNES[wc.finetune]["backbone"]),
        arch=lambda wc: config["backbones"][FINETUNES[wc.finetune]["backbone"]],  # the fresh denoiser's
    log:
        get_log("train_scratch", "{finetune}"),
    benchmark:
        get_benchmark("train_scratch", "{finetune}")
    threads: get_threads("train_scratch")


rule plot_dmp_activation:
    input:
        unpack(get_dmp_activation_inputs),
    output:
        activation=f"{RESULTS}/finetune/{{finetune}}_activation.npz",
        plot=report(
            f"{RESULTS}/plots/dmp_activation_{{finetune}}.png",
            caption="../report/dmp_activation.rst",
            category="Plots",
            subcategory="DMP",
            labels={"finetune": "{finetune}", "plot": "prompt activation"},
        ),
    params:
        backbone=lambda wc: get_backbone_spec(FINETUNES[wc.finetune]["backbone"]),
    log:
        get_log("plot_dmp_activation", "{finetune}"),
    benchmark:
        get_benchmark("plot_dmp_activation", "{finetune}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_dmp_activation.py"


# DMP Table 5: one job per run of a `metrics: latent_structure` table, on the latents its FID samples
# decode from (evaluate_run keeps them for these runs: no second sampling pass)
rule latent_structure:
    input:
        unpack(get_latent_structure_inputs),
    output:
        stats=get_run_path("{run}", "latent_structure.json"),
    params:
        n_latents=min(1000, config["evaluation"]["fid"]["n_samples"]),  # the paper's 1000, or the FID count
    log:
        get_log("latent_structure", "{run}"),
    benchmark:
        get_benchmark("latent_structure", "{run}")
    threads: get_threads("latent_structure")
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/latent_structure.py"
