"""The smoke workflow end to end through Snakemake (config/smoke.yaml), in a scratch directory.

The `smoke` fixture (conftest.py) runs the whole DAG once per session."""
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import run_smoke as run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke")]


def test_every_rule_ran_and_logged(smoke):
    res = smoke / "results"
    for rule in ["render_dataset", "make_compbench_prompts", "data_coverage", "train_text_encoder", "train_vae",
                 "encode_latents", "evaluate_vae", "pretrain_base", "sample_base_grid", "plot_training_curves",
                 "foundation_summary"]:
        assert list((res / "logs" / rule).glob("*.log")), rule
    for split in ["train", "reference"]:
        labels = [json.loads(ln) for ln in (res / f"data/{split}/labels.jsonl").read_text().splitlines()]
        assert all((res / f"data/{split}" / r["file"]).is_file() for r in labels)
    assert len(list((res / "data/compbench").glob("*_train.txt"))) == 6
    assert len(list((res / "data/compbench").glob("*_val.txt"))) == 6


def test_models_are_safetensors_and_reload(smoke):
    from tsmflow.models.backbone import load_mini_backbone
    res = smoke / "results"
    for b in ["unet", "dit", "mmdit"]:
        d = res / "models/base" / b
        assert (d / "diffusion_pytorch_model.safetensors").is_file() and (d / "loss.csv").is_file()
        bb = load_mini_backbone(b, d, res / "models/vae", res / "models/text_encoder")
        assert bb.objective == ("flow" if b == "mmdit" else "eps") and bb.latent_shape == (4, 8, 8)
    assert list((res / "models/vae").glob("*.safetensors")) and list((res / "models/text_encoder").glob("*.safetensors"))
    assert not list(res.rglob("*.tmp")) and not list(res.rglob("*.bin"))


def test_sample_grids_and_summary(smoke):
    res = smoke / "results"
    for b in ["unet", "dit", "mmdit"]:
        im = np.asarray(Image.open(res / f"samples/base/{b}.png"))
        assert im.shape[0] > 100 and im.shape[1] > 200 and im.std() > 5
    summary = (res / "foundation.md").read_text()
    for name in ["text encoder", "vae", "denoiser unet", "denoiser dit", "denoiser mmdit", "PSNR"]:
        assert name in summary
    m = json.loads((res / "vae/reconstruction.json").read_text())
    assert m["n_images"] == 32 and 0 < m["mse"] < 1
    assert "Rare compositions" in (res / "data/coverage.md").read_text()


def test_evaluation_outputs(smoke):
    res = smoke / "results"
    status = json.loads((res / "evaluator/validation.json").read_text())
    md = (res / "evaluator/validation.md").read_text()
    assert "passed" in status and "Negative control" in md
    # the decoder-output view and the object-free control run in the DAG too
    assert "## VAE reconstructions" in md and "### Object-free images" in md and "reconstructions" in status
    for run in ["base_unet", "base_dit", "base_mmdit"]:
        m = json.loads((res / f"runs/{run}/metrics.json").read_text())
        for cat in ["color", "shape", "texture", "spatial", "non_spatial", "complex"]:
            assert 0 <= m[cat] <= 100
            # T2I-CompBench layout: <category>/samples/<prompt>_<6-digit idx>.png, one running index
            files = (res / f"runs/{run}/compbench/{cat}/samples").glob("*.png")
            assert sorted(int(f.stem[-6:]) for f in files) == list(range(3 * 2))
        assert m["fid"] >= 0 and m["fid_n_samples"] == 16
        # CLIP score of the same 16 samples, by the workflow's own CLIP scorer (a cosine)
        assert -1 <= m["clip_score"] <= 1 and m["clip_n"] == 16 and m["clip_score_se"] > 0
    scorer = json.loads((res / "models/clip_scorer/stats.json").read_text())
    assert scorer["heldout_n"] == 64 and -1 <= scorer["heldout_shuffled"] <= 1
    table = (res / "tables/base_models.md").read_text()
    assert "[TSM Table 1]" in table and "unet (pre-trained)" in table and "36.97" in table
    for ext in ("csv", "tex"):
        assert (res / f"tables/base_models.{ext}").is_file()


def test_tsm_stages(smoke):
    res = smoke / "results"
    gors = json.loads((res / "gors/unet/summary.json").read_text())
    assert gors["generated"] == 6 * 6 and 0 < gors["kept"] <= gors["generated"]
    # one job (log, benchmark, directory) per expert: n=2 core set and n=1 context set
    for es, n in [("unet-gors-n2-r2-s2", 2), ("unet-gors-n1-r2-s2", 1), ("mmdit-post-n2-r2-s2", 2)]:
        for i in range(n):
            d = res / f"experts/{es}/expert{i}"
            assert (d / "pytorch_lora_weights.safetensors").is_file(), d
            assert (res / f"logs/train_expert/{es}_{i}.log").is_file()
            assert json.loads((d / "stats.json").read_text())["interval"] == i
    for run in ["tsm1_unet", "tsm2_unet", "moe_unet", "tsm2_mmdit"]:
        m = json.loads((res / f"runs/{run}/metrics.json").read_text())
        assert 0 <= m["color"] <= 100 and m["trainable_params"] > 0, run
    gates = (res / "runs/tsm2_unet/gates.csv").read_text().splitlines()
    assert gates[0] == "layer,t,scale,gate" and len(gates) > 100
    assert (res / "runs/tsm2_mmdit/gates.png").is_file() and (res / "plots/tsm_table4_score_vs_n.png").is_file()
    table = (res / "tables/tsm_table4.md").read_text()
    assert "TSM 2-stage" in table and "Color [TSM Table 4]" in table and "Trainable (%)" in table


def test_deme_stages(smoke):
    res = smoke / "results"
    for deme_set in ["unet-post-n2-p50", "unet-post-n2-p50-r2"]:
        for i in range(2):  # one job per range, each a plain diffusers model
            d = res / f"deme/{deme_set}/range{i}"
            assert (d / "diffusion_pytorch_model.safetensors").is_file() and (d / "scheduler").is_dir(), d
            assert json.loads((d / "stats.json").read_text())["range"] == [500 * i, 500 * (i + 1)]
        merged = res / f"deme/{deme_set}/merged"
        search = (merged / "search.csv").read_text().splitlines()
        weights = json.loads((merged / "weights.json").read_text())
        assert search[0].startswith("eval,phase,w0,w1") and len(search) - 1 == weights["n_evals"] <= 4
        assert (res / f"plots/deme_cosine_{deme_set}.png").is_file()
    before = json.loads((res / "runs/deme_before_unet/metrics.json").read_text())
    after = json.loads((res / "runs/deme_after_unet/metrics.json").read_text())
    assert 0 <= before["color"] <= 100 and 0 <= after["color"] <= 100 and after["fid"] >= 0
    table = (res / "tables/deme_supp_table1.md").read_text()
    assert "DeMe after merge" in table and "FID [DeMe Supp. Table 1]" in table and "3.51" in table
    assert (res / "plots/deme_supp_table1_deme_sensitivity.png").is_file()


def test_dmp_stages(smoke):
    res = smoke / "results"
    full, dmp = res / "finetune/dit-post-full", res / "finetune/dit-post-dmp"
    assert (full / "diffusion_pytorch_model.safetensors").is_file() and (full / "scheduler").is_dir()
    assert (dmp / "dmp.safetensors").is_file() and (dmp / "step1/dmp.safetensors").is_file()
    m = {r: json.loads((res / f"runs/{r}/metrics.json").read_text()) for r in ["full_dit", "dmp_dit", "dmp_dit_s1"]}
    assert m["full_dit"]["trainable_params"] > m["dmp_dit"]["trainable_params"] > 0
    assert "color" not in m["dmp_dit"] and not (res / "runs/dmp_dit/compbench").exists()  # FID-only runs
    assert m["dmp_dit_s1"]["fid"] >= 0
    for f in ["plots/dmp_activation_dit-post-dmp.png", "plots/dmp_activation_unet-post-dmp.png",
              "plots/dmp_table3_fid_vs_steps.png", "plots/dmp_table3_fid.png"]:
        assert (res / f).is_file(), f
    assert not (res / "plots/dmp_table3_categories.png").exists()  # an FID-only table has no category plot
    assert "6.32" in (res / "tables/dmp_table3.md").read_text()  # the paper's +10K fine-tuning cell
    # DMP Table 1: the patch counted from the trained job, against the denoiser it patches
    stats = json.loads((dmp / "stats.json").read_text())
    assert stats["added_params"] == m["dmp_dit"]["trainable_params"] > 0 and stats["denoiser_params"] > 0
    row = pd.read_csv(res / "tables/dmp_table1.csv", dtype=str).iloc[0]
    assert float(row["With DMP (M)"]) == pytest.approx((stats["denoiser_params"] + stats["added_params"]) / 1e6,
                                                       abs=1e-4)
    assert row["#Parameters (M), with DMP [DMP Table 1]"] == "132.5"
    # DMP Table 6: a fresh dit trained with DMP from the first step; its snapshot and end model, each with a patch
    scratch = res / "finetune/dit-scratch-dmp"
    for d in (scratch, scratch / "step1"):
        assert (d / "diffusion_pytorch_model.safetensors").is_file() and (d / "dmp.safetensors").is_file()
    st6 = json.loads((scratch / "stats.json").read_text())
    assert st6["with_dmp"] and st6["trainable_params"] > st6["denoiser_params"] > 0
    t6 = pd.read_csv(res / "tables/dmp_table6.csv", dtype=str)
    assert t6["FID [DMP Table 6]"].tolist() == ["—", "13.87"] and t6["FID (shapes features)"].str.contains("±").all()
    # DMP Table 5: both models' final latents, as many as FID samples (16 < the paper's 1000)
    s5 = {r: json.loads((res / f"runs/{r}/latent_structure.json").read_text()) for r in ("base_dit", "dmp_dit")}
    assert all(s["n_latents"] == 16 and -1 <= s["correlation_min"] < s["correlation_mean"] < 1 for s in s5.values())
    assert "temporal_bias_std" in s5["dmp_dit"] and "temporal_bias_std" not in s5["base_dit"]
    t5 = pd.read_csv(res / "tables/dmp_table5.csv", dtype=str)
    assert t5["Correlation mean [DMP Table 5]"].tolist() == ["0.1715", "0.1410"]


def test_distilled_students_sample_with_their_own_steps_and_report_weight_change(smoke):
    res = smoke / "results"
    m = {r: json.loads((res / f"runs/{r}/metrics.json").read_text()) for r in ["wadi_lorad_unet", "dmd4_dora_mmdit"]}
    assert m["wadi_lorad_unet"]["nfe"] == 1 and m["dmd4_dora_mmdit"]["nfe"] == 4
    for r in m.values():
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["weight_layers"] > 0
        assert r["trainable_params"] > 0 and 0 < r["trainable_pct"] < 5  # a low-rank adapter, not the model
    stats = json.loads((res / "students/unet-1step-lorad-r2/stats.json").read_text())
    assert stats["fake_trainable_params"] > 0 and stats["student_trainable_params"] == m["wadi_lorad_unet"][
        "trainable_params"]
    assert (res / "students/unet-1step-lorad-r2/adapter/pytorch_lora_weights.safetensors").is_file()
    assert (res / "plots/wadi_adapters_weight_change.png").is_file()
    table = (res / "tables/wadi_adapters.md").read_text()
    assert "Direction change DM (%)" in table and "20.86" in table  # the paper's LoRaD FID, labelled



def test_a_tsm_2_stage_student_routes_over_frozen_experts_and_counts_only_its_routers(smoke):
    res = smoke / "results"
    m = json.loads((res / "runs/dmd4_tsm2_unet/metrics.json").read_text())
    one, two = (json.loads((res / f"students/{s}/stats.json").read_text()) for s in ("unet-4step-tsm-r2",
                                                                                      "unet-4step-tsm2"))
    assert m["nfe"] == 4 and "norm_change" not in m and two["experts"] == [4, 1] and m["patch_fid"] > 0
    # only the routers train: their saved weights are the whole count (at rank 2 they can outnumber the experts)
    routers = load_file(res / "students/unet-4step-tsm2/router.safetensors")
    assert m["trainable_params"] == two["student_trainable_params"] == sum(v.numel() for v in routers.values()) > 0
    assert one["student_trainable_params"] > 0
    # its context student ran DMD2's GAN phase on the split's latents (config smoke: students.unet-4step-lora-r2)
    context = json.loads((res / "students/unet-4step-lora-r2/stats.json").read_text())
    assert context["gan"]["fake_weight"] == 0.01
    assert (res / "students/unet-4step-lora-r2/gan_head.safetensors").is_file()
    names = sorted(p.name for p in (res / "students/unet-4step-tsm2/experts").iterdir())
    assert names == ["context0_0", "core0", "core1", "core2", "core3"]
    assert (res / "students/unet-4step-tsm2/router.safetensors").is_file()
    assert "unet: 4-step TSM 2-stage" in (res / "tables/wadi_adapters.md").read_text()


def test_report_gathers_tables_and_images(smoke, snakemake_bin, root):
    report = smoke / "results/report.html"
    r = run(snakemake_bin, root, smoke, "--report", str(report))
    assert r.returncode == 0, r.stderr[-3000:]
    html = report.read_text(errors="replace")
    for needle in ["base_models.md", "tsm_table4.md", "gates.png", "tsm_table4_score_vs_n.png", "validation.md",
                   "unet.png", "grid.png", "training_curves.png",
                   "base_models_categories.png", "image/png"]:
        assert needle in html, needle


def test_published_parts_are_the_run_s_tables_byte_for_byte(smoke, snakemake_bin, root):
    """docs/results/<part>/ holds the part's tables and claims as results/ has them, under one provenance line naming
    the command that builds the part; rule publish_part regenerates it byte for byte; the index joins the parts."""
    res, docs = smoke / "results", smoke / "docs/results"
    r = run(snakemake_bin, root, smoke, "publish_parts")  # targets of their own, after `all`
    assert r.returncode == 0, r.stderr[-3000:]
    parts = yaml.safe_load((root / "config/smoke.yaml").read_text())["parts"]
    for part, tables in parts.items():
        line = (docs / part / "README.md").read_text().splitlines()[2]
        assert "commit " in line and "config " in line and "CPUs" in line and "jobs upstream" in line
        assert f"command `snakemake --configfile config/smoke.yaml docs/results/{part}`" in line
        published = sorted((docs / part / "tables").glob("*.md"))
        assert [t.stem for t in published] == sorted(tables)
        for t in published:
            assert t.read_bytes() == f"> {line}\n\n".encode() + (res / "tables" / t.name).read_bytes(), t
            assert t.with_suffix(".csv").read_bytes() == f"# {line}\n".encode() + (
                res / "tables" / t.name).with_suffix(".csv").read_bytes()
        claims = docs / part / "claims.md"
        assert claims.read_bytes() == f"> {line}\n\n".encode() + (res / "parts" / part / "claims.md").read_bytes()
    with Image.open(docs / "tsm/plots/base_models_categories.png") as im:
        assert im.text["provenance"] == (docs / "tsm/README.md").read_text().splitlines()[2]
    assert "tsm2_vs_tsm1_unet" in (docs / "tsm/claims.md").read_text()
    assert "dmp_vs_full_dit" in (docs / "others/claims.md").read_text()
    before = {p.relative_to(docs): p.read_bytes() for p in docs.rglob("*") if p.is_file()}
    r = run(snakemake_bin, root, smoke, "publish_parts", "--forcerun", "publish_part")
    assert r.returncode == 0 and "publish_part" in r.stdout + r.stderr, r.stderr[-3000:]
    after = {p.relative_to(docs): p.read_bytes() for p in docs.rglob("*") if p.is_file()}
    assert after == before
    r = run(snakemake_bin, root, smoke, "docs/results/README.md", "--forcerun", "publish_index")
    assert r.returncode == 0, r.stderr[-3000:]
    index, claims = (docs / "README.md").read_text(), (docs / "claims.md").read_text()
    assert "Not published yet" not in index and "[claims](tsm/claims.md)" in index
    assert "tsm2_vs_tsm1_unet" in claims and "dmp_vs_full_dit" in claims


def test_rerun_has_nothing_to_do(smoke, snakemake_bin, root):
    r = run(snakemake_bin, root, smoke, "-n")
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-3000:]


def test_a_stage_setting_reruns_only_its_stage(smoke, snakemake_bin, root, tmp_path):
    """Rule params carry only what a job uses: the search's sample count and DMP's lr rerun their own jobs."""
    cfg = yaml.safe_load((root / "config/smoke.yaml").read_text())
    cfg["deme"]["search"]["n_samples"] += 1
    cfg["finetune"]["dmp"]["train"]["lr"] *= 2
    cfg["students"]["unet-1step-lorad-r2"]["steps"] += 1
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg, sort_keys=False))  # Snakemake compares params as written, order too
    r = run(snakemake_bin, root, smoke, "-n", configfile=edited)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, flags=re.M))
    assert "deme_merge_search" in jobs and "train_dmp" in jobs, r.stdout[-3000:]
    assert jobs.get("distill_student") == "1", r.stdout[-3000:]  # that student only, not the mmdit's
    assert "deme_finetune_range" not in jobs and "train_full" not in jobs, r.stdout[-3000:]
    # a TSM 2-stage student follows the students it routes over: the LoRA context's steps rerun both, not the core
    cfg = yaml.safe_load((root / "config/smoke.yaml").read_text())
    cfg["students"]["unet-4step-lora-r2"]["steps"] += 1
    edited.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run(snakemake_bin, root, smoke, "-n", configfile=edited)
    assert r.returncode == 0, r.stderr[-3000:]
    assert dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, flags=re.M)).get("distill_student") == "2", r.stdout[-3000:]
    rerun = set(re.findall(r"^\s+output: results/students/([\w.-]+)$", r.stdout, flags=re.M))
    assert rerun == {"unet-4step-lora-r2", "unet-4step-tsm2"}, r.stdout[-3000:]


def params_changed_rules(dry_run_stdout: str) -> set[str]:
    """Rules of a dry run's jobs that rerun because their own params changed (not because an input did)."""
    rules = set()
    for block in re.split(r"\n\s*\n", dry_run_stdout):
        head = re.search(r"^(?:local)?rule (\w+):$", block, flags=re.M)
        if head and re.search(r"^\s+reason:.*Params have changed since last execution", block, flags=re.M):
            rules.add(head[1])
    return rules


# one leaf key of the smoke config -> the rules whose scripts read it (the two wrong reruns a review found:
# grid_seeds regenerated GORS data, position_tol retrained the evaluator)
ONE_KEY_RULES = [
    (("sampling", "grid_seeds"), {"sample_base_grid", "run_sample_grid"}),
    (("evaluator", "validation", "position_tol"), {"validate_evaluator"}),
    (("evaluator", "train", "lr"), {"train_evaluator"}),
    (("evaluation", "images_per_prompt"), {"evaluate_run"}),
    (("evaluation", "fid", "n_boot"), {"evaluate_run", "evaluate_run_fid"}),
    (("gors", "seed"), {"generate_prompt_images"}),
    (("router", "train", "lr"), {"assemble_router"}),
    (("lora", "train", "lr"), {"train_expert", "train_moe_lora"}),
]


@pytest.mark.parametrize("key,rules", ONE_KEY_RULES, ids=[".".join(k) for k, _ in ONE_KEY_RULES])
def test_one_key_reruns_exactly_the_rules_that_use_it(smoke, snakemake_bin, root, tmp_path, key, rules):
    cfg = yaml.safe_load((root / "config/smoke.yaml").read_text())
    node = cfg
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = node[key[-1]] + 1 if isinstance(node[key[-1]], int) else node[key[-1]] * 1.5
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run(snakemake_bin, root, smoke, "-n", configfile=edited)
    assert r.returncode == 0, r.stderr[-3000:]
    assert params_changed_rules(r.stdout) == rules, r.stdout[-3000:]


def test_empty_prompt_file_fails_clearly(smoke, snakemake_bin, root, tmp_path):
    work = tmp_path / "work"  # a copy: the failed job deletes its output, and the other tests need it
    shutil.copytree(smoke, work, symlinks=True)
    (work / "results/data/compbench/color_val.txt").write_text("")
    r = run(snakemake_bin, root, work, "results/samples/base/unet.png", "--force")
    log = (work / "results/logs/sample_base_grid/unet.log").read_text()
    assert r.returncode != 0 and "color_val.txt: prompt file is empty" in log


def test_training_through_accelerate_launch(smoke, snakemake_bin, root, tmp_path):
    """accelerate_launch: the rule's script reruns itself under `accelerate launch` (1 CPU process here)."""
    again = tmp_path / "accel"
    shutil.copytree(smoke, again, symlinks=True)
    target = "results/models/base/unet"
    r = run(snakemake_bin, root, again, target, "--forcerun", "pretrain_base", "--config", "accelerate_launch=True")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (again / "results/logs/pretrain_base/unet.log").read_text()
    assert "accelerate.commands.launch --num_processes 1" in log and "--cpu" in log and "pretrain unet" in log
    weights = f"{target}/diffusion_pytorch_model.safetensors"
    assert (again / weights).read_bytes() == (smoke / weights).read_bytes()  # same seeds, same weights


def test_same_seeds_give_identical_metrics(smoke, snakemake_bin, root, tmp_path):
    """Retrain the unet base and the evaluator, and redo everything downstream: identical bytes."""
    again = tmp_path / "again"
    shutil.copytree(smoke, again, symlinks=True)
    targets = ["results/runs/base_unet/metrics.json", "results/runs/tsm2_unet/metrics.json"]
    r = run(snakemake_bin, root, again, *targets, "--forcerun", "pretrain_base", "train_evaluator")
    assert r.returncode == 0, r.stderr[-3000:]
    for rule in ["pretrain_base", "train_evaluator", "train_expert", "assemble_router", "evaluate_run"]:
        assert rule in r.stdout + r.stderr, rule  # the jobs really ran again
    for f in [*targets, "results/models/base/unet/diffusion_pytorch_model.safetensors"]:
        assert (again / f).read_bytes() == (smoke / f).read_bytes(), f
