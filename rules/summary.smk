# Stage: the foundation summary (VAE error, parameter counts, throughput, wall times) and loss curves.


rule plot_training_curves:
    input:
        text_encoder=get_model_dir("text_encoder"),
        vae=get_model_dir("vae"),
        base=[get_base_dir(b) for b in TEXT_BACKBONES],
    output:
        report(f"{RESULTS}/plots/training_curves.png", caption="../report/training_curves.rst", category="Foundation"),
    log:
        get_log("plot_training_curves"),
    benchmark:
        get_benchmark("plot_training_curves")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_training_curves.py"


rule foundation_summary:
    input:
        text_encoder=get_model_dir("text_encoder"),
        vae=get_model_dir("vae"),
        vae_metrics=rules.evaluate_vae.output.metrics,
        base=[get_base_dir(b) for b in TEXT_BACKBONES],
        grids=[f"{RESULTS}/samples/base/{b}.png" for b in TEXT_BACKBONES],
    output:
        report(f"{RESULTS}/foundation.md", caption="../report/foundation.rst", category="Foundation"),
    params:
        benchmarks=f"{RESULTS}/benchmarks",
    log:
        get_log("foundation_summary"),
    benchmark:
        get_benchmark("foundation_summary")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/foundation_summary.py"
