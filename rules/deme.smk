# Stage: DeMe (decouple-then-merge). One fine-tuning job per timestep range, then a search for the merge
# weights on a small-sample FID objective; the merged model is sampled like any other run.


rule deme_finetune_range:
    input:
        unpack(get_deme_range_inputs),
    output:
        model=directory(get_deme_range_dir("{deme_set}", "{range}")),
    params:
        set=lambda wc: DEME_SETS[wc.deme_set],
        # without the search settings, so changing them reruns only the search
        deme={k: v for k, v in config["deme"].items() if k != "search"},
        backbone=lambda wc: get_backbone_spec(DEME_SETS[wc.deme_set]["backbone"]),
    log:
        get_log("deme_finetune_range", "{deme_set}", "{range}"),
    benchmark:
        get_benchmark("deme_finetune_range", "{deme_set}", "{range}")
    threads: get_threads("deme_finetune_range")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/deme_finetune_range.py"


rule deme_merge_search:
    input:
        unpack(get_deme_search_inputs),
    output:
        model=directory(get_deme_merged_dir("{deme_set}")),
    params:
        search=config["deme"]["search"],
        fid={k: v for k, v in get_fid_params().items()
             if k in ("feature_space", "n_samples", "batch_size", "inception_weights")},
        # guidance and precision of the backbone's sampler (the search sets its own steps)
        sampling=lambda wc: {k: get_backbone_sampling(DEME_SETS[wc.deme_set]["backbone"])[k]
                             for k in ("guidance_scale", "precision")},
        require_validated=config["evaluation"]["require_validated_evaluator"],
        backbone=lambda wc: get_backbone_spec(DEME_SETS[wc.deme_set]["backbone"]),
    log:
        get_log("deme_merge_search", "{deme_set}"),
    benchmark:
        get_benchmark("deme_merge_search", "{deme_set}")
    threads: get_threads("deme_merge_search")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/deme_merge_search.py"


rule plot_deme_cosine:
    input:
        merged=get_deme_merged_dir("{deme_set}"),
    output:
        plot=report(
            f"{RESULTS}/plots/deme_cosine_{{deme_set}}.png",
            caption="../report/deme_cosine.rst",
            category="Plots",
            subcategory="DeMe",
            labels={"deme set": "{deme_set}", "plot": "task-vector cosine similarity"},
        ),
    log:
        get_log("plot_deme_cosine", "{deme_set}"),
    benchmark:
        get_benchmark("plot_deme_cosine", "{deme_set}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_deme_cosine.py"


rule plot_deme_sensitivity:
    input:
        unpack(get_table_metrics),
    output:
        plot=report(
            f"{RESULTS}/plots/{{table}}_deme_sensitivity.png",
            caption="../report/deme_sensitivity.rst",
            category="Plots",
            subcategory="DeMe",
            labels={"table": "{table}", "plot": "N and p sensitivity"},
        ),
    params:
        decl=lambda wc: TABLES[wc.table],
        deme_sets=DEME_SETS,
        runs=lambda wc: {r["run"]: RUNS[r["run"]] for r in TABLES[wc.table]["rows"]},
    log:
        get_log("plot_deme_sensitivity", "{table}"),
    benchmark:
        get_benchmark("plot_deme_sensitivity", "{table}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_deme_sensitivity.py"
