"""Config validation: a bad config fails before any job runs, naming the offending key."""
import subprocess

import pytest
import yaml

from tsmflow.config import ConfigError, load_config


def dry_run(snakemake_bin, root, tmp_path, mutate):
    cfg = yaml.safe_load((root / "config/smoke.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # --configfile replaces nothing wholesale (configs deep-merge), so test a full config
    return subprocess.run([snakemake_bin, "-n", "-s", str(root / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(path)], capture_output=True, text=True, timeout=120)


def test_smoke_config_is_valid(snakemake_bin, root, tmp_path):
    r = dry_run(snakemake_bin, root, tmp_path, lambda c: None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pretrain_base" in r.stdout


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["vae"]["train"].__setitem__("steps", "many"), "steps"),
    (lambda c: c["data"].__setitem__("p_relation", 1.5), "p_relation"),
    (lambda c: c["backbones"]["unet"].__setitem__("objective", "x0"), "objective"),
    (lambda c: c["sampling"].__setitem__("guidance", 3.0), "guidance"),
])
def test_bad_config_fails_before_any_job_naming_the_key(snakemake_bin, root, tmp_path, mutate, key):
    r = dry_run(snakemake_bin, root, tmp_path, mutate)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Error validating config file" in out and key in out, out[-2000:]
    assert not (tmp_path / "results").exists()


def test_object_count_probabilities_must_sum_to_one(snakemake_bin, root, tmp_path):
    r = dry_run(snakemake_bin, root, tmp_path, lambda c: c["data"].__setitem__("n_objects_p", [0.5, 0.5, 0.5]))
    assert r.returncode != 0 and "data.n_objects_p must sum to 1" in r.stdout + r.stderr


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["parts"]["tsm"].append("no_such_table"), "parts.tsm: table 'no_such_table' is not declared"),
    (lambda c: c["parts"]["others"].append("tsm_table4"), "table 'tsm_table4' is already in part"),
    (lambda c: c["parts"]["others"].remove("dmp_table1"), "tables ['dmp_table1'] are in no part"),
    (lambda c: c["claims"].update(split={**c["claims"]["dmp_vs_full_dit"], "baseline": {"runs": ["tsm2_unet"]}}),
     "claims.split: no part's tables hold all its runs"),
])
def test_parts_hold_every_table_once_and_every_claim(snakemake_bin, root, tmp_path, mutate, message):
    r = dry_run(snakemake_bin, root, tmp_path, mutate)
    assert r.returncode != 0 and message in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


def test_full_config_is_an_overlay_of_the_default(snakemake_bin, root, tmp_path):
    """config/full.yaml merges key by key into the default: a valid config, larger sizes, 2-thread jobs."""
    default, full = (yaml.safe_load((root / f"config/{n}.yaml").read_text()) for n in ("config", "full"))
    assert full["evaluation"]["fid"]["n_samples"] > default["evaluation"]["fid"]["n_samples"]
    assert full["sampling"]["steps"] > default["sampling"]["steps"]
    assert set(full.get("runs", {})) <= set(default["runs"])  # it resizes runs (DMP Table 6's snapshots), adds none
    # the target goes first: whatever follows --configfile is read as one more config file
    r = subprocess.run([snakemake_bin, "results/runs/base_unet/metrics.json", "-n", "-s", str(root / "Snakefile"),
                        "--directory", str(tmp_path), "--configfile", str(root / "config/config.yaml"),
                        str(root / "config/full.yaml")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    job = r.stdout[r.stdout.index("rule evaluate_run:"):].split("\n\n")[0]
    assert "threads: 2" in job  # the default gives evaluate_run 1 thread


def test_full_config_adds_the_dit_and_mmdit_ablations(root):
    """TSM Tables 7, 8 and 11: the default holds the unet block, full.yaml restates it and adds dit and mmdit."""
    default, full = (yaml.safe_load((root / f"config/{n}.yaml").read_text()) for n in ("config", "full"))

    def runs(row):
        return row.get("runs", [row.get("run")])

    def backbones(rows):
        return {default["runs"][r]["backbone"] for row in rows for r in runs(row)}

    for t in ("tsm_table7", "tsm_table8", "tsm_table11"):
        rows, full_rows = default["tables"][t]["rows"], full["tables"][t]["rows"]
        assert backbones(rows) == {"unet"} and backbones(full_rows) == {"unet", "dit", "mmdit"}
        assert [r for r in full_rows if backbones([r]) == {"unet"}] == rows
    for name, c in full["claims"].items():
        assert name not in default["claims"]
        assert all(r in default["runs"] for side in ("ours", "baseline") for r in c[side]["runs"])


def test_a_run_seed_is_refused_where_nothing_would_use_it(snakemake_bin, root, tmp_path):
    r = dry_run(snakemake_bin, root, tmp_path, lambda c: c["runs"]["tsm1_unet"].__setitem__("seed", 1))
    assert r.returncode != 0 and "tsm1_unet" in r.stdout + r.stderr


def test_threads_may_only_name_rules(snakemake_bin, root, tmp_path):
    r = dry_run(snakemake_bin, root, tmp_path, lambda c: c["threads"].__setitem__("train_expertx", 1))
    assert r.returncode != 0 and "config key threads: no rule named train_expertx" in r.stdout + r.stderr


@pytest.mark.parametrize("name", ["sd15", "sd2", "pixart", "sd3"])
def test_backbone_configs_carry_sup_a_hyperparameters(root, name):
    cfg = load_config(root / f"config/backbones/{name}.yaml")
    assert list(cfg["backbones"]) == [name]  # the default's miniature backbones are replaced, its tables kept
    assert cfg["tables"] == load_config(root / "config/config.yaml")["tables"]
    lora = cfg["backbones"][name]["lora"]
    assert lora["denoiser_targets"] == ["to_q", "to_k", "to_v", "to_out.0"] and lora["alpha_over_rank"] == 1.0
    train = lora["train"]
    assert train["batch_size"] * train["grad_accum"] == 64 and train["warmup_steps"] == 0
    lr = {"sd15": 1e-4, "sd2": 1e-4, "pixart": 2e-5, "sd3": 1e-5}[name]
    assert train["lr"] == lr == cfg["backbones"][name]["router"]["train"]["lr"]
    assert cfg["backbones"][name]["router"]["train"]["steps"] == 4000
    # TSM Sup. A: 8 core experts of rank 4 and one context expert, 4000 steps each
    assert cfg["runs"][f"tsm2_{name}"] == {"method": "tsm2", "backbone": name, "core": f"{name}-post-n8-r4-s4000",
                                           "context": [f"{name}-post-n1-r4-s4000"], "evaluate": ["fid"]}
    assert cfg["evaluation"]["fid"]["feature_space"] == "inception" and cfg["evaluation"]["fid"]["n_samples"] == 30000


def test_bad_backbone_config(root, tmp_path):
    bad = yaml.safe_load((root / "config/backbones/sd15.yaml").read_text())
    bad["backbones"]["sd15"]["resolution"] = "512"
    bad["extends"] = str(root / "config/config.yaml")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"key backbones.sd15.resolution: '512' is not of type 'integer'"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad["extends"] = "absent.yaml"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="key extends: .*absent.yaml is not a file"):
        load_config(tmp_path / "b.yaml")


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["runs"]["tsm1_unet"].__setitem__("experts", "unet-gors-n8-r4"), "experts"),
    (lambda c: c["runs"]["tsm2_unet"].pop("context"), "context"),
    (lambda c: c["lora"]["train"].__setitem__("steps", 5), "steps"),
    (lambda c: c["runs"]["tsm1_unet"].__setitem__("experts", "dit-gors-n2-r2-s2"), "is not on backbone 'unet'"),
    (lambda c: c["runs"]["tsm1_unet"].__setitem__("experts", "unet-coco-n2-r2-s2"), "a task in"),
])
def test_bad_tsm_runs_fail_before_any_job(snakemake_bin, root, tmp_path, mutate, needle):
    r = dry_run(snakemake_bin, root, tmp_path, mutate)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and needle in out, out[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["runs"]["dmp_dit"].__setitem__("finetune", "dit-post-nothing"), "is not declared under finetunes"),
    (lambda c: c["runs"]["deme_after_unet"].__setitem__("backbone", "dit"), "is not on backbone 'dit'"),
    (lambda c: c["runs"]["dmp_dit_s1"].__setitem__("step", 7), "is not one of the snapshots"),
    (lambda c: c["finetunes"]["dit-post-dmp"]["dmp"].__setitem__("gate", "sparse") if "dmp" in c["finetunes"]["dit-post-dmp"]
     else c["finetunes"]["dit-post-dmp"].__setitem__("dmp", {"gate": "sparse"}), "sparse"),
    (lambda c: c["deme_sets"]["unet-post-n2-p50"].__setitem__("p", 1.5), "1.5"),
    (lambda c: c["deme_sets"]["unet-post-n2-p50-r2"].pop("rank"), "rank"),
    (lambda c: c["runs"]["deme_before_unet"].__setitem__("evaluate", ["fid"]), "is FID-only"),
    (lambda c: c.pop("classes"), "config key classes: backbones ['cdit'] are class-conditional"),
    (lambda c: c["runs"]["dmp_cdit"].pop("evaluate"), "config key runs.dmp_cdit: the class-conditional cdit"),
    (lambda c: c["finetunes"]["cdit-post-dmp"].__setitem__("task", "gors"), "task 'gors' on backbone 'cdit'"),
])
def test_bad_deme_and_dmp_config_fails_before_any_job(snakemake_bin, root, tmp_path, mutate, needle):
    r = dry_run(snakemake_bin, root, tmp_path, mutate)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and needle in out, out[-2000:]


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["students"]["unet-4step-tsm-r2"].pop("experts"), "students.unet-4step-tsm-r2.experts"),
    (lambda c: c["students"]["unet-4step-tsm2"].__setitem__("core", "unet-4step-lora-r2"),
     "students.unet-4step-tsm2.core: 'unet-4step-lora-r2' must be a student of adapter tsm"),
    (lambda c: c["students"]["unet-4step-tsm2"].__setitem__("context", ["unet-1step-lorad-r2"]),
     "students.unet-4step-tsm2.context: 'unet-1step-lorad-r2' must be a student of adapter lora or tsm"),
    (lambda c: c["students"]["unet-4step-tsm-r2"].__setitem__("timesteps", [999, 499]), "has timesteps"),
    (lambda c: c["runs"]["dmd4_tsm2_unet"].__setitem__("sampling", {"steps": 2}), "runs.dmd4_tsm2_unet.sampling"),
    (lambda c: c["runs"]["wadi_lorad_unet_s1"].__setitem__("step", 2),
     "runs.wadi_lorad_unet_s1.step: 2 is not one of the snapshots of students.unet-1step-lorad-r2"),
    (lambda c: c["runs"]["base_unet"].__setitem__("step", 1), "runs.base_unet.step: 1 is not one of the snapshots"),
    (lambda c: c["tables"]["wadi_steps"]["rows"].append({"run": "dmd4_tsm2_unet", "label": "x"}) or
     c["tables"]["wadi_steps"]["rows"].append({"run": "tsm1_unet", "label": "y"}), "fid_vs_steps plots base"),
])
def test_bad_tsm_students_fail_before_any_job(snakemake_bin, root, tmp_path, mutate, needle):
    r = dry_run(snakemake_bin, root, tmp_path, mutate)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and needle in out, out[-2000:]


def test_deme_ranges_and_finetunes_are_separate_jobs(snakemake_bin, root, tmp_path):
    r = dry_run(snakemake_bin, root, tmp_path, lambda c: None)
    for i in range(2):
        assert f"results/deme/unet-post-n2-p50/range{i}" in r.stdout
    assert "results/deme/unet-post-n2-p50/merged" in r.stdout and "results/finetune/dit-post-dmp" in r.stdout


def test_experts_of_a_set_are_separate_jobs(snakemake_bin, root, tmp_path):
    r = dry_run(snakemake_bin, root, tmp_path, lambda c: None)
    for i in range(2):  # smoke's core set has n=2: one train_expert job per interval
        assert f"results/experts/unet-gors-n2-r2-s2/expert{i}" in r.stdout


def test_scripts_read_rule_params_not_the_config(root):
    # a key a script reads from snakemake.config is invisible to Snakemake's params rerun trigger
    offenders = [p.name for p in sorted([*(root / "scripts").glob("*.py"), *(root / "src/tsmflow").rglob("*.py")])
                 if "snakemake.config" in p.read_text()]
    assert not offenders, f"scripts reading snakemake.config instead of rule params: {offenders}"


HEAVY = ("torch", "diffusers", "transformers")


def heavy_imports(root, files) -> tuple[list[str], list[str]]:
    """The library imports of `files`, and which of torch/diffusers/transformers they load (a fresh interpreter)."""
    import ast
    import re
    import sys
    lines = [m.group(0).strip() for f in files
             for m in re.finditer(r"^\s*(from tsmflow[.\w]* import [\w, ]+|import tsmflow[.\w]*)", f.read_text(), re.M)]
    code = "\n".join(["import sys", "sys.path.insert(0, 'src')", *lines,
                      f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return lines, ast.literal_eval(r.stdout.strip().splitlines()[-1])


def test_parsing_the_workflow_imports_neither_torch_nor_diffusers(root):
    """Every library import of the Snakefile and its rule files: building the DAG (each dry run, each cluster
    submission) must not pay for torch."""
    lines, heavy = heavy_imports(root, [root / "Snakefile", *sorted((root / "rules").glob("*.smk"))])
    assert len(lines) >= 4 and not heavy, f"parsing imports {heavy} via {lines}"


@pytest.mark.parametrize("script", ["make_table", "make_claims", "publish_part", "publish_index", "plot_table",
                                    "plot_training_curves", "plot_score_vs_n", "plot_fid_vs_steps",
                                    "plot_deme_sensitivity", "plot_deme_cosine", "plot_weight_change",
                                    "foundation_summary", "data_coverage"])
def test_table_and_plot_jobs_import_no_model_library(root, script):
    """A job that only reads JSON or CSV and writes a table or a plot pays no torch or diffusers import (seconds
    per job, over a hundred such jobs in the default DAG)."""
    _, heavy = heavy_imports(root, [root / "scripts" / f"{script}.py"])
    assert not heavy, f"scripts/{script}.py imports {heavy}"


def test_memory_and_runtime_live_in_the_slurm_profile_and_it_names_only_real_rules(root):
    import re
    smk = {f.name: f.read_text() for f in sorted((root / "rules").glob("*.smk"))}
    sized = [f"{name}: {m[0].strip()}" for name, text in smk.items()
             for m in re.finditer(r"^\s+(mem_mb|runtime)\s*=.*$", text, re.M)]
    assert not sized, f"rules size themselves; sizes belong in profiles/slurm/config.yaml: {sized}"
    rules = {m[1] for text in smk.values() for m in re.finditer(r"^(?:rule|use rule \w+ as) (\w+)", text, re.M)}
    profile = yaml.safe_load((root / "profiles/slurm/config.yaml").read_text())
    unknown = sorted(set(profile["set-resources"]) - rules)
    assert not unknown, f"profiles/slurm/config.yaml sizes rules that do not exist: {unknown}"
    gpu_rules = {"train_expert", "assemble_router", "distill_student", "evaluate_run", "evaluate_run_fid",
                 "encode_image_text"}
    assert all("mem_mb" in profile["set-resources"][r] and "runtime" in profile["set-resources"][r]
               for r in gpu_rules)


def test_the_method_registry_is_the_schema_s_list_of_run_methods(root):
    from tsmflow.methods import METHODS, method_of
    schema = yaml.safe_load((root / "config/schema.yaml").read_text())
    enum = schema["properties"]["runs"]["additionalProperties"]["properties"]["method"]["enum"]
    assert sorted(enum) == sorted(METHODS)
    assert [m for m, d in METHODS.items() if d.router] == ["tsm2", "moe_lora"]
    with pytest.raises(ConfigError, match="runs.x.method: 'tsm3'"):
        method_of({"method": "tsm3"}, "runs.x")


def test_extends_replaces_whole_top_level_blocks_and_follows_chains(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"a": {"x": 1, "y": 2}, "b": [1], "c": "base"}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/mid.yaml").write_text(yaml.safe_dump({"extends": "../base.yaml", "a": {"x": 3}}))
    (tmp_path / "sub/top.yaml").write_text(yaml.safe_dump({"extends": "mid.yaml", "c": "top"}))
    from tsmflow.config import extend
    top = yaml.safe_load((tmp_path / "sub/top.yaml").read_text())
    # `a` is mid's whole block (its y is gone, not merged), `c` is top's, `b` the base's; no `extends` is left
    assert extend(top, tmp_path / "sub/top.yaml") == {"a": {"x": 3}, "b": [1], "c": "top"}
    assert extend({"c": 1}, tmp_path / "x.yaml") == {"c": 1}  # a complete config is returned as it is


@pytest.mark.parametrize("gors, ok", [
    ({"recipe": "t2i_compbench", "tier_split": 560, "threshold": [92, 70]}, True),
    ({"recipe": "t2i_compbench", "threshold": [92, 70]}, False),  # its tiers need the split
    ({"recipe": "t2i_compbench", "tier_split": 560, "threshold": 5}, False),
    ({"recipe": "mini", "threshold": [92, 70]}, False),
    ({"threshold": 5}, True),
])
def test_gors_recipe_and_threshold_shapes_are_checked(root, gors, ok):
    from tsmflow.config import validate
    cfg = yaml.safe_load((root / "config/smoke.yaml").read_text())
    th = gors.pop("threshold")
    cfg["gors"].update(gors, threshold={c: th for c in cfg["gors"]["threshold"]})
    if ok:
        validate(cfg, root / "config/schema.yaml")
    else:
        with pytest.raises(ConfigError, match="key gors"):
            validate(cfg, root / "config/schema.yaml")
