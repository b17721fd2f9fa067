# Stage: the evaluator (trained, then validated in a report) and per-run evaluation:
# CompBench-mini images -> scores, and FID (shapes features by default) against cached reference stats.


rule train_evaluator:
    input:
        # trained on the VAE's reconstructions too: every generated image passes through its decoder
        vae=get_model_dir("vae"),
    output:
        model=directory(get_model_dir("evaluator")),
    params:
        cfg={k: v for k, v in config["evaluator"].items() if k not in ("validation", "thresholds")},
        resolution=config["resolution"],
    log:
        get_log("train_evaluator"),
    benchmark:
        get_benchmark("train_evaluator")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/train_evaluator.py"


rule validate_evaluator:
    input:
        model=get_model_dir("evaluator"),
        vae=get_model_dir("vae"),
        prompts=[f for k, f in get_compbench_files().items() if k.endswith("_val")],
    params:
        # what validate_evaluator reads of the evaluator config: its data block only for the
        # training seed (held out?) and scene mix
        cfg={k: config["evaluator"][k] for k in ("data", "validation", "thresholds") if k in config["evaluator"]},
        resolution=config["resolution"],
        # no object-free image may reach the lowest GORS keep-threshold (a score in [0, 1])
        junk_threshold=min(config["gors"]["threshold"].values()) / 100,
    output:
        report=report(
            f"{RESULTS}/evaluator/validation.md", caption="../report/validation.rst", category="Evaluator"
        ),
        status=f"{RESULTS}/evaluator/validation.json",
    log:
        get_log("validate_evaluator"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/validate_evaluator.py"


rule fid_reference_stats:
    input:
        model=get_model_dir("evaluator"),
        data=get_split_dir("reference"),
    output:
        stats=f"{RESULTS}/evaluator/fid_reference_{{feature_space}}.npz",
    log:
        get_log("fid_reference_stats", "{feature_space}"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/fid_reference_stats.py"


rule sample_compbench:
    input:
        unpack(get_run_model_inputs),
        prompts=[f for k, f in get_compbench_files().items() if k.endswith("_val")],
    output:
        images=directory(get_run_path("{run}", "compbench")),
    params:
        run=lambda wc: RUNS[wc.run],
        sampling=config["sampling"],
        evaluation=config["evaluation"],
    log:
        get_log("sample_compbench", "{run}"),
    benchmark:
        get_benchmark("sample_compbench", "{run}")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/sample_compbench.py"


rule sample_fid:
    input:
        unpack(get_run_model_inputs),
        reference=get_split_dir("reference"),
    output:
        images=directory(get_run_path("{run}", "fid_samples")),
    params:
        run=lambda wc: RUNS[wc.run],
        sampling=config["sampling"],
        evaluation=config["evaluation"],
    log:
        get_log("sample_fid", "{run}"),
    benchmark:
        get_benchmark("sample_fid", "{run}")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/sample_fid.py"


rule score_compbench:
    input:
        images=get_run_path("{run}", "compbench"),
        model=get_model_dir("evaluator"),
        validation=rules.validate_evaluator.output.status,
    output:
        scores=get_run_path("{run}", "compbench_scores.csv"),
    params:
        resolution=config["resolution"],
        require_validated=config["evaluation"]["require_validated_evaluator"],
    log:
        get_log("score_compbench", "{run}"),
    benchmark:
        get_benchmark("score_compbench", "{run}")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/score_compbench.py"


rule compute_fid:
    input:
        images=get_run_path("{run}", "fid_samples"),
        model=get_model_dir("evaluator"),
        validation=rules.validate_evaluator.output.status,
        reference=get_fid_reference(),
    output:
        fid=get_run_path("{run}", "fid.json"),
    params:
        feature_space=config["evaluation"]["fid"]["feature_space"],
        require_validated=config["evaluation"]["require_validated_evaluator"],
    log:
        get_log("compute_fid", "{run}"),
    benchmark:
        get_benchmark("compute_fid", "{run}")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/compute_fid.py"


rule run_metrics:
    input:
        unpack(get_run_metric_inputs),
    output:
        metrics=get_run_path("{run}", "metrics.json"),
    params:
        run=lambda wc: RUNS[wc.run],
    log:
        get_log("run_metrics", "{run}"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/run_metrics.py"
