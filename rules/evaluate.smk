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
    threads: get_threads("train_evaluator")
    resources:
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
        junk_threshold=min(min(v) if isinstance(v, list) else v for v in config["gors"]["threshold"].values()) / 100,
    output:
        report=report(
            f"{RESULTS}/evaluator/validation.md", caption="../report/validation.rst", category="Evaluator"
        ),
        status=f"{RESULTS}/evaluator/validation.json",
    log:
        get_log("validate_evaluator"),
    benchmark:
        get_benchmark("validate_evaluator")
    threads: get_threads("validate_evaluator")
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
    params:
        inception_weights=get_inception_weights,
        keep_features=True,  # precision and recall need the reference samples, not only their moments
    log:
        get_log("fid_reference_stats", "{feature_space}"),
    benchmark:
        get_benchmark("fid_reference_stats", "{feature_space}")
    threads: get_threads("fid_reference_stats")
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/fid_reference_stats.py"


# One job per run (sampling, scoring, FID, metrics.json): the run's model and the evaluator load once, and a
# run pays one interpreter start instead of five (bench/results/job_overhead.md). FID-only runs
# (`evaluate: [fid]`) get the second rule, whose params leave out what CompBench-mini sampling uses.
rule evaluate_run:
    input:
        unpack(get_run_eval_inputs),
    output:
        compbench=directory(get_run_path("{run}", "compbench")),
        scores=get_run_path("{run}", "compbench_scores.csv"),
        fid_samples=directory(get_run_path("{run}", "fid_samples")),
        fid=get_run_path("{run}", "fid.json"),
        metrics=get_run_path("{run}", "metrics.json"),
    wildcard_constraints:
        run=runs_regex([r for r in RUNS if "compbench" in run_evaluations(r)]),
    params:
        run=lambda wc: RUNS[wc.run],
        backbone=lambda wc: get_backbone_spec(RUNS[wc.run]["backbone"]),
        sampling=lambda wc: get_run_sampling(wc.run),
        images_per_prompt=config["evaluation"]["images_per_prompt"],
        seed=config["evaluation"]["seed"],
        fid=get_fid_params(),
        clip=get_clip_params(),
        fid_latents=lambda wc: wc.run in get_latent_structure_runs(),  # DMP Table 5 reads them
        resolution=lambda wc: get_resolution(RUNS[wc.run]["backbone"]),
        scorer=lambda wc: get_scorer(RUNS[wc.run]["backbone"]),
        require_validated=config["evaluation"]["require_validated_evaluator"],
    log:
        get_log("evaluate_run", "{run}"),
    benchmark:
        get_benchmark("evaluate_run", "{run}")
    threads: get_threads("evaluate_run")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/evaluate_run.py"


use rule evaluate_run as evaluate_run_fid with:
    output:
        fid_samples=directory(get_run_path("{run}", "fid_samples")),
        fid=get_run_path("{run}", "fid.json"),
        metrics=get_run_path("{run}", "metrics.json"),
    wildcard_constraints:
        run=runs_regex([r for r in RUNS if "compbench" not in run_evaluations(r)]),
    # `use rule` merges params: the CompBench-only ones are set to None, so their keys do not rerun FID-only runs
    params:
        run=lambda wc: RUNS[wc.run],
        backbone=lambda wc: get_backbone_spec(RUNS[wc.run]["backbone"]),
        sampling=lambda wc: get_run_sampling(wc.run),
        images_per_prompt=None,
        seed=config["evaluation"]["seed"],
        fid=get_fid_params(),
        resolution=None,
        scorer=None,
        require_validated=config["evaluation"]["require_validated_evaluator"],
    log:
        get_log("evaluate_run_fid", "{run}"),
    benchmark:
        get_benchmark("evaluate_run_fid", "{run}")
    threads: get_threads("evaluate_run_fid")


use rule fid_reference_stats as fid_reference_stats_classes with:
    input:
        model=get_model_dir("evaluator"),
        data=get_split_dir("classes_reference"),
    output:
        stats=f"{RESULTS}/evaluator/fid_reference_classes_{{feature_space}}.npz",
    log:
        get_log("fid_reference_stats_classes", "{feature_space}"),
    benchmark:
        get_benchmark("fid_reference_stats_classes", "{feature_space}")


# the reference of a paper model's FID: COCO2014 val (rule coco_reference), Inception features
use rule fid_reference_stats as fid_reference_stats_coco with:
    input:
        data=get_coco_reference(),
    output:
        stats=f"{RESULTS}/data/fid_reference_coco_{{feature_space}}.npz",
    params:
        inception_weights=get_inception_weights,
        # precision/recall need the reference's own features: 40K x 2048 in float32 (330 MB) for COCO2014 val
        keep_features=config["evaluation"]["fid"].get("precision_recall", False),
    log:
        get_log("fid_reference_stats_coco", "{feature_space}"),
    benchmark:
        get_benchmark("fid_reference_stats_coco", "{feature_space}")


# The CLIP scorer of the miniature (evaluation.clip): a second contrastive CLIP on the pre-training renders, kept
# whole (image and text towers), with its own seed; a paper model's config names a transformers CLIP instead.
rule train_clip_scorer:
    input:
        data=get_split_dir("train"),
        heldout=get_split_dir("reference"),  # its stats.json: held-out scenes with their own and others' captions
    output:
        model=directory(get_model_dir("clip_scorer")),
    params:
        cfg=config["evaluation"].get("clip"),
    log:
        get_log("train_clip_scorer"),
    benchmark:
        get_benchmark("train_clip_scorer")
    threads: get_threads("train_clip_scorer")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/train_clip_scorer.py"
