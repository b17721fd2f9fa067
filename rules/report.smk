# Stage: tables declared in config (CSV, Markdown, LaTeX beside the papers' numbers) and plots.


rule make_table:
    input:
        unpack(get_table_metrics),
    output:
        csv=f"{RESULTS}/tables/{{table}}.csv",
        md=report(
            f"{RESULTS}/tables/{{table}}.md",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
        tex=f"{RESULTS}/tables/{{table}}.tex",
    params:
        decl=lambda wc: TABLES[wc.table],
    log:
        get_log("make_table", "{table}"),
    benchmark:
        get_benchmark("make_table", "{table}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/make_table.py"


rule make_claims:
    input:
        unpack(get_claims_metrics),
    output:
        csv=f"{RESULTS}/tables/claims.csv",
        md=report(
            f"{RESULTS}/tables/claims.md",
            caption="../report/claims.rst",
            category="Tables",
            labels={"table": "claims"},
        ),
    params:
        claims=CLAIMS,
    log:
        get_log("make_claims"),
    benchmark:
        get_benchmark("make_claims")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/make_claims.py"


# One part's claims (config key parts): the claims page of the runs that part's tables hold.
rule make_part_claims:
    input:
        unpack(get_part_claims_metrics),
    output:
        csv=f"{RESULTS}/parts/{{part}}/claims.csv",
        md=f"{RESULTS}/parts/{{part}}/claims.md",
    params:
        claims=lambda wc: get_part_claims(wc.part),
    log:
        get_log("make_part_claims", "{part}"),
    benchmark:
        get_benchmark("make_part_claims", "{part}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/make_claims.py"


# docs/results/<part>/: one part's tables, claims and table plots, each under a provenance line (commit, config
# hash, machine, wall time, the command that builds the part). It reads only results/, so each part publishes from
# its own run; `git add docs/results` publishes it.
rule publish_part:
    input:
        unpack(get_part_inputs),
    output:
        directory(f"{PUBLISHED}/{{part}}"),
    params:
        config_hash=get_config_hash(),
        command=lambda wc: get_run_command(f"{PUBLISHED}/{wc.part}"),
        repo=workflow.basedir,
        # Snakemake's records of the jobs upstream (start, end, inputs), for their times (read, not tracked)
        metadata=".snakemake/metadata",
    log:
        get_log("publish_part", "{part}"),
    benchmark:
        get_benchmark("publish_part", "{part}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/publish_part.py"


# Every part, for `make run` (a whole default run); the folder's index then comes from `publish_index`.
rule publish_parts:
    input:
        expand(f"{PUBLISHED}/{{part}}", part=PARTS),


# docs/results/README.md and claims.md: the published parts as they are on disk, each with its own provenance, and
# the declared parts not published yet. It reads docs/results/ only, so parts from different runs join one index;
# Snakemake cannot see those folders as inputs, so `make publish-index` forces it.
rule publish_index:
    output:
        index=f"{PUBLISHED}/README.md",
        claims=f"{PUBLISHED}/claims.md",
    params:
        docs=lambda wc, output: os.path.dirname(output.index),
        parts={p: {"tables": PARTS[p], "claims": PART_CLAIMS[p]} for p in PARTS},
    log:
        get_log("publish_index"),
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/publish_index.py"


rule plot_table_categories:
    input:
        unpack(get_table_metrics),
    output:
        bars=report(
            f"{RESULTS}/plots/{{table}}_categories.png",
            caption="../report/category_bars.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "CompBench-mini per category"},
        ),
    params:
        decl=lambda wc: TABLES[wc.table],
    log:
        get_log("plot_table_categories", "{table}"),
    benchmark:
        get_benchmark("plot_table_categories", "{table}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_table.py"


rule plot_table_fid:
    input:
        unpack(get_table_metrics),
    output:
        fid=report(
            f"{RESULTS}/plots/{{table}}_fid.png",
            caption="../report/fid_plot.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "FID"},
        ),
    params:
        decl=lambda wc: TABLES[wc.table],
    log:
        get_log("plot_table_fid", "{table}"),
    benchmark:
        get_benchmark("plot_table_fid", "{table}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_table.py"


# FID against training steps: the snapshots of further-training jobs (DMP Table 3) or distilled students
rule plot_fid_vs_steps:
    input:
        unpack(get_table_metrics),
    output:
        plot=report(
            f"{RESULTS}/plots/{{table}}_fid_vs_steps.png",
            caption="../report/fid_vs_steps.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "FID over training steps"},
        ),
    params:
        points=lambda wc: get_steps_points(wc.table),
        title=lambda wc: TABLES[wc.table]["title"],
    log:
        get_log("plot_fid_vs_steps", "{table}"),
    benchmark:
        get_benchmark("plot_fid_vs_steps", "{table}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_fid_vs_steps.py"


rule run_sample_grid:
    input:
        images=get_run_path("{run}", "compbench"),
        scores=get_run_path("{run}", "compbench_scores.csv"),
    output:
        grid=report(
            get_run_path("{run}", "grid.png"),
            caption="../report/run_grid.rst",
            category="Sample grids",
            labels={"run": "{run}"},
        ),
    params:
        prompts_per_category=config["sampling"]["grid_prompts_per_category"],
        seeds=config["sampling"]["grid_seeds"],
    log:
        get_log("run_sample_grid", "{run}"),
    benchmark:
        get_benchmark("run_sample_grid", "{run}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/run_sample_grid.py"


rule plot_score_vs_n:
    input:
        unpack(get_table_metrics),
    output:
        plot=report(
            f"{RESULTS}/plots/{{table}}_score_vs_n.png",
            caption="../report/score_vs_n.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "score vs n"},
        ),
    params:
        decl=lambda wc: TABLES[wc.table],
    log:
        get_log("plot_score_vs_n", "{table}"),
    benchmark:
        get_benchmark("plot_score_vs_n", "{table}")
    threads: 1
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_score_vs_n.py"


rule plot_router_gates:
    input:
        unpack(get_run_model_inputs),
        prompts=[f for k, f in get_compbench_files().items() if k.endswith("_val")],
    output:
        gates=get_run_path("{run}", "gates.csv"),
        plot=report(
            get_run_path("{run}", "gates.png"),
            caption="../report/router_gates.rst",
            category="Plots",
            subcategory="Router gates",
            labels={"run": "{run}", "plot": "gates vs t"},
        ),
    params:
        run=lambda wc: RUNS[wc.run],
        sampling=get_sampling_params(),
    log:
        get_log("plot_router_gates", "{run}"),
    benchmark:
        get_benchmark("plot_router_gates", "{run}")
    threads: get_threads("plot_router_gates")
    resources:
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/plot_router_gates.py"
