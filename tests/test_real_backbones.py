"""The papers' models through the one DAG: each shipped config (config/backbones/*.yaml, which extends the default)
plans the cluster's jobs in a dry run, and tiny random pipelines run the same stage rules as the miniature, from
image-text data and COCO captions in their published formats."""
from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import run_smoke, save_inception_stand_in
from tsmflow import runs as runs_lib
from tsmflow.config import load_config
from tsmflow.reporting.tables import build_table
from test_backbones import build_pipeline, save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]

NAMES = {"sd15": "sd15", "sd2": "sd2", "pixart": "pixart_alpha", "sd3": "sd3"}  # backbone name -> family
# core n=8 (8 jobs) + context n=1 (1) + vanilla LoRA r32 (1); five runs sampled and scored (TSM Table 12)
# COCO's reference stats twice: Inception and Patch-FID on Inception (evaluation.fid.patch_fid)
JOBS = {"coco_reference": 1, "encode_image_text": 1, "fid_reference_stats_coco": 2, "train_expert": 10,
        "assemble_router": 1, "evaluate_run_fid": 5, "make_table": 1, "plot_table_fid": 1, "all": 1}
RUNS = ["base", "lora_r4", "lora_r32", "tsm1", "tsm2"]
# a guard against a hung run, not a speed check: CI runs these beside the smoke DAG on the same 2 cores
HANG = 2400
# SD1.5 also has the default config's students: 4-step LoRA, TSM 1-stage and 2-stage, one-step LoRaD; their four
# runs are sampled and scored in tsm_table3, tsm_table6 and wadi_main (with its weight-change plot)
DISTILL_JOBS = {"distill_student": 4, "evaluate_run_fid": 4, "make_table": 3, "plot_table_fid": 3,
                "plot_weight_change": 1}
# SD1.5 and PixArt-alpha: DMP Table 2's further training (full fine-tuning, prompt tuning, DMP; three runs) and its
# Table 1 (parameters); SD1.5 also DeMe (four range models, the merge search, two runs: table deme_sd15)
DMP_JOBS = {"train_full": 1, "train_dmp": 2, "evaluate_run_fid": 3, "plot_dmp_activation": 1, "make_table": 2,
            "plot_table_fid": 1}
DEME_JOBS = {"deme_finetune_range": 4, "deme_merge_search": 1, "evaluate_run_fid": 2, "plot_deme_cosine": 1,
             "make_table": 1, "plot_table_fid": 1}
# SD1.5, PixArt-alpha and SD3: TSM Table 4's block, domain adaptation on T2I-CompBench (GORS data; three runs scored
# by its scorers, with their sample grids)
GORS_JOBS = {"generate_prompt_images": 1, "encode_prompt_images": 1, "train_expert": 10, "assemble_router": 1,
             "evaluate_run": 3, "make_table": 1, "run_sample_grid": 3, "plot_table_categories": 1}
EXTRA_JOBS = {"sd15": [DISTILL_JOBS, DMP_JOBS, DEME_JOBS, GORS_JOBS], "pixart": [DMP_JOBS, GORS_JOBS],
              "sd3": [GORS_JOBS]}


def with_run(run: dict):
    """A config change: the default's runs plus run `x` (a config that sets `runs` replaces the default's)."""
    return lambda c: c.update(runs={**load_config(ROOT / "config/config.yaml")["runs"], "x": run})


def job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def dry_run(snakemake_bin, root, workdir, configfile, *targets):
    return subprocess.run([snakemake_bin, "-n", "-s", str(root / "Snakefile"), "--directory", str(workdir), *targets,
                           "--configfile", str(configfile)], capture_output=True, text=True, timeout=300)


def shipped(root, tmp, name: str, change=None):
    """A shipped config with its placeholder data paths pointed at fixture data in the published formats (written
    beside the fixtures, so it extends the default by absolute path)."""
    if not (tmp / "laion").is_dir():
        write_fixture_data(tmp)
    cfg = yaml.safe_load((root / f"config/backbones/{name}.yaml").read_text())
    cfg["extends"] = str(root / "config/config.yaml")
    cfg["backbones"][name]["data"] = {"image_text_folder": str(tmp / "laion")}
    cfg["coco"].update(annotations=str(tmp / "coco/annotations/captions_val2014.json"), images=str(tmp / "coco/val2014"))
    if "t2i_compbench" in cfg:
        cfg["t2i_compbench"]["prompts"] = str(tmp / "t2i")
    if change:
        change(cfg)
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return tmp / "config.yaml"


@pytest.mark.parametrize("name", NAMES)
def test_each_paper_model_config_plans_its_table_rows_through_the_stage_rules(snakemake_bin, root, tmp_path, name):
    r = dry_run(snakemake_bin, root, tmp_path / "work", shipped(root, tmp_path, name), "results/tables/tsm_table12.md")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert job_counts(r.stdout) == {k: v for k, v in JOBS.items() if k not in ("all", "plot_table_fid")}
    for es, n in [(f"{name}-post-n8-r4-s4000", 8), (f"{name}-post-n1-r4-s4000", 1), (f"{name}-post-n1-r32-s4000", 1)]:
        for i in range(n):
            assert f"results/experts/{es}/expert{i}" in r.stdout
    for run in RUNS:
        assert f"results/runs/{run}_{name}/fid.json" in r.stdout
    assert "pretrain_base" not in r.stdout and "train_evaluator" not in r.stdout  # no miniature foundation
    r = dry_run(snakemake_bin, root, tmp_path / "work", tmp_path / "config.yaml")  # `rule all`: its tables
    extra = EXTRA_JOBS.get(name, [])
    want = {k: JOBS.get(k, 0) + sum(e.get(k, 0) for e in extra) for k in {**JOBS, **DMP_JOBS, **DEME_JOBS,
                                                                         **DISTILL_JOBS, **GORS_JOBS}}
    assert r.returncode == 0 and job_counts(r.stdout) == {k: v for k, v in want.items() if v}, \
        r.stdout[-2000:] + r.stderr[-3000:]
    assert not (tmp_path / "work/results").exists()


def test_placeholder_data_and_absent_offline_inception_weights_fail_before_any_job(snakemake_bin, root, tmp_path):
    r = dry_run(snakemake_bin, root, tmp_path, root / "config/backbones/sd15.yaml")  # /data/... placeholders
    assert r.returncode != 0 and "config key backbones.sd15.data.image_text_folder: /data/laion-pop/ is not a " \
        "directory" in r.stdout + r.stderr
    offline = shipped(root, tmp_path, "sd15", lambda c: c["backbones"]["sd15"].update(local_files_only=True))
    r = dry_run(snakemake_bin, root, tmp_path / "work", offline)
    assert r.returncode != 0 and "config key evaluation.fid.inception_weights: the offline backbones ['sd15']" in (
        r.stdout + r.stderr)
    offline_clip = shipped(root, tmp_path, "sd15", lambda c: (c["backbones"]["sd15"].update(local_files_only=True),
                                                                c["evaluation"]["fid"].update(inception_weights=__file__)))
    r = dry_run(snakemake_bin, root, tmp_path / "work", offline_clip)
    assert r.returncode != 0 and "config key evaluation.clip.local_files_only: the offline backbones ['sd15']" in (
        r.stdout + r.stderr)
    offline_scorers = shipped(root, tmp_path, "sd15", lambda c: (
        c["backbones"]["sd15"].update(local_files_only=True), c["evaluation"]["fid"].update(inception_weights=__file__),
        c["evaluation"]["clip"].update(local_files_only=True)))
    r = dry_run(snakemake_bin, root, tmp_path / "work", offline_scorers)
    assert r.returncode != 0 and "config key t2i_compbench.scorers.local_files_only: the offline backbones " \
        "['sd15']" in r.stdout + r.stderr
    placeholder = shipped(root, tmp_path, "sd15", lambda c: c["t2i_compbench"].update(
        prompts="/data/T2I-CompBench/examples/dataset/"))
    r = dry_run(snakemake_bin, root, tmp_path / "work", placeholder)
    assert r.returncode != 0 and "config key t2i_compbench.prompts: /data/T2I-CompBench/examples/dataset: " \
        "T2I-CompBench prompt folder not found" in r.stdout + r.stderr
    absent = shipped(root, tmp_path, "sd15", lambda c: c["evaluation"]["fid"].update(
        inception_weights=str(tmp_path / "absent.pt")))
    r = dry_run(snakemake_bin, root, tmp_path / "work", absent)
    assert r.returncode != 0 and f"inception_weights: {tmp_path / 'absent.pt'} is not a file" in r.stdout + r.stderr


@pytest.mark.parametrize("change, needle", [
    (lambda c: c["backbones"]["sd15"].pop("data"),
     "config key backbones.sd15.data: deme_sets.sd15-post-n4-p30 trains on the backbone's post-pretraining data"),
    (lambda c: c.pop("t2i_compbench"), "config key t2i_compbench: "),
    (with_run({"method": "moe_lora", "backbone": "sd15", "task": "post", "n_experts": 2, "rank": 2, "steps": 2}),
     "config key runs.x: moe_lora runs on the miniature only"),
    (lambda c: c.update(deme_sets={"d": {"backbone": "sd15", "task": "gors", "n": 2, "p": 0.3, "steps": 5}}),
     "config key deme_sets.d: on a paper model (sd15), deme_sets further train the pre-trained denoiser on its "
     "post-pretraining data"),
    (lambda c: c.update(finetunes={"f": {"backbone": "sd15", "task": "post", "method": "scratch", "steps": 5}}),
     "config key finetunes.f: on a paper model (sd15), finetunes further train"),
    (with_run({"method": "base", "backbone": "sd9"}),
     "config key runs.x.backbone: backbone 'sd9' is not one of"),
    (lambda c: c["evaluation"]["fid"].update(feature_space="shapes"),
     "config key evaluation.fid.feature_space: the paper models' FID is on Inception features"),
])
def test_bad_paper_model_config_fails_before_any_job_naming_its_key(snakemake_bin, root, tmp_path, change, needle):
    r = dry_run(snakemake_bin, root, tmp_path / "work", shipped(root, tmp_path, "sd15", change))
    assert r.returncode != 0 and needle in r.stdout + r.stderr, r.stdout[-1500:] + r.stderr[-1500:]


def test_run_fingerprint_changes_with_the_trained_weights_and_the_backbone(tmp_path):
    expert = tmp_path / "expert"
    expert.mkdir()
    (expert / "adapter.safetensors").write_bytes(b"weights-1")
    backbone, run = {"family": "sd15", "pretrained": "some/model"}, {"method": "lora"}
    key = runs_lib.run_fingerprint(backbone, run, [expert])
    assert runs_lib.run_fingerprint(backbone, run, [expert]) == key
    assert runs_lib.run_fingerprint({**backbone, "pretrained": "other/model"}, run, [expert]) != key
    (expert / "adapter.safetensors").write_bytes(b"weights-2")
    assert runs_lib.run_fingerprint(backbone, run, [expert]) != key


def test_tsm_table12_cites_the_paper_on_its_pixart_rows_only(root):
    decl = load_config(root / "config/config.yaml")["tables"]["tsm_table12"]
    decl = {**decl, "rows": [r for r in decl["rows"] if r["run"].endswith("_pixart")]}
    metrics = {r["run"]: {"fid": 20.0, "fid_n_samples": 30000, "fid_feature_space": "inception"} for r in decl["rows"]}
    df = build_table(decl, metrics).set_index("runs")
    assert df.loc["base_pixart", "FID [TSM Table 12]"] == "23.15" and df.loc["tsm2_pixart", "FID [TSM Table 12]"] == "16.78"
    assert df.loc["lora_r32_pixart", "FID [TSM Table 12]"] == "—"  # the paper has no such row
    assert "for reference only" in decl["caption"]
    sd15 = {**decl, "rows": [{"run": "base_sd15", "label": "SD1.5 (pre-trained)"}]}
    cols = build_table(sd15, {"base_sd15": metrics["base_pixart"]}).columns
    assert not any("TSM Table 12" in c for c in cols)  # no row of the paper's: no paper columns


# ---------------------------------------------------------------- tiny paper models through the DAG

CAPTIONS = ["a red circle", "a blue square", "a red square", "a blue circle", "a circle", "a square"]


def _image(rng, w, h):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def write_fixture_data(root):
    """LAION-style image-text folder (img2dataset "files": <name>.jpg + <name>.txt, in numbered sub-folders) and
    COCO2014 captions (captions_val2014.json + val2014/COCO_val2014_<12-digit id>.jpg)."""
    rng = np.random.default_rng(0)
    for k in range(8):
        folder = root / "laion" / f"{k // 4:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        _image(rng, 48, 40).save(folder / f"{k:09d}.jpg")
        (folder / f"{k:09d}.txt").write_text(CAPTIONS[k % len(CAPTIONS)] + "\n")
    images, annotations = [], []
    (root / "coco/val2014").mkdir(parents=True)
    for k in range(1, 7):
        name = f"COCO_val2014_{k:012d}.jpg"
        _image(rng, 40, 36).save(root / "coco/val2014" / name)
        images.append({"id": k, "file_name": name})
        annotations += [{"image_id": k, "id": 10 * k + j, "caption": CAPTIONS[(k + j) % 6]} for j in range(2)]
    (root / "coco/annotations").mkdir()
    (root / "coco/annotations/captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations}))
    (root / "t2i").mkdir()
    for cat in ("color", "shape", "texture", "spatial", "non_spatial", "complex"):  # T2I-CompBench's prompt files
        for split in ("train", "val"):
            (root / "t2i" / f"{cat}_{split}.txt").write_text("a red circle and a blue square\r\na blue circle")


def tiny_config(root, tmp, name: str = "sd15", dtype: str = "float32", patch_fid: bool = False):
    """A shipped config with the tiny pipeline, the fixture data and tiny sizes (2 core experts of rank 2, 2 steps
    each), and its own runs and table: the same keys a cluster run uses."""
    cfg = yaml.safe_load((root / f"config/backbones/{name}.yaml").read_text())
    cfg["extends"] = str(root / "config/config.yaml")
    b = cfg["backbones"][name]
    b.update(pretrained=str(tmp / "pipeline"), local_files_only=True, dtype=dtype, resolution=32,
             data={"image_text_folder": str(tmp / "laion")})
    b["sampling"]["steps"] = 2
    b["lora"]["alpha_over_rank"] = 3.0  # alpha != rank: exported files must carry the scale alpha / rank
    # the text encoders' LoRA in its own AdamW group; both lrs large enough to move visibly in 2 steps
    b["lora"]["text_encoder_train"] = {"lr": 1e-2, "weight_decay": 0.0}
    for stage in (b["lora"], b["router"]):
        stage["train"].update(batch_size=2, grad_accum=2, lr=1e-2, checkpoint_every=0)
    b["router"]["train"]["steps"] = 2
    cfg["coco"].update(annotations=str(tmp / "coco/annotations/captions_val2014.json"),
                       images=str(tmp / "coco/val2014"), n_reference=6, resolution=32)
    # Patch-FID only where a test asks for it: each FID's matrix square root of 2048-wide covariances (Inception's
    # width, which clean-fid's wrapper fixes) costs ~20 s on one core; for that reason no bootstrap either (its
    # resamples are tested on shapes features, in test_fid)
    cfg["evaluation"]["fid"].update(n_samples=4, batch_size=4, patch_fid=patch_fid, n_boot=0,
                                    inception_weights=str(save_inception_stand_in(tmp / "inception/inception.pt")))
    cfg["evaluation"]["clip"] = {"pretrained": str(save_tiny_clip(tmp / "clip")), "local_files_only": True}
    cfg.update(gpus_per_job=0, threads={"default": 1}, claims={}, parts={"post_pretraining": ["tsm_table12"]})
    core, context = f"{name}-post-n2-r2-s2", f"{name}-post-n1-r2-s2"
    cfg["runs"] = {f"base_{name}": {"method": "base", "backbone": name, "evaluate": ["fid"]},
                   f"lora_r2_{name}": {"method": "lora", "backbone": name, "experts": context, "evaluate": ["fid"]},
                   f"lora_r4_{name}": {"method": "lora", "backbone": name, "experts": f"{name}-post-n1-r4-s2",
                                       "evaluate": ["fid"]},
                   f"tsm1_{name}": {"method": "tsm1", "backbone": name, "experts": core, "evaluate": ["fid"]},
                   f"tsm2_{name}": {"method": "tsm2", "backbone": name, "core": core, "context": [context],
                                    "evaluate": ["fid"]}}
    table = copy.deepcopy(load_config(root / "config/config.yaml")["tables"]["tsm_table12"])
    labels = ["SD1.5 (pre-trained)", "SD1.5 + vanilla LoRA r2", "SD1.5 + vanilla LoRA r4", "SD1.5 + TSM 1-stage",
              "SD1.5 + TSM 2-stage"]
    table["rows"] = [{"run": r, "label": label} for r, label in zip(cfg["runs"], labels)]
    cfg["tables"] = {"tsm_table12": table}
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return tmp / "config.yaml"


@pytest.mark.slow  # not in the smoke group: it needs no smoke output, so the other worker takes it
def test_tiny_sd15_runs_post_pretraining_through_the_stage_rules(snakemake_bin, root, tmp_path):
    build_pipeline("sd15", tmp_path / "tokenizer_src").save_pretrained(tmp_path / "pipeline")
    write_fixture_data(tmp_path)
    config = tiny_config(root, tmp_path, patch_fid=True)
    work = tmp_path / "work"
    res = work / "results"
    runs = ["base_sd15", "lora_r2_sd15", "lora_r4_sd15", "tsm1_sd15", "tsm2_sd15"]
    r = run_smoke(snakemake_bin, root, work, "--cores", "1", configfile=config, timeout=HANG)
    assert r.returncode == 0, r.stderr[-4000:]

    labels = [json.loads(ln) for ln in (res / "data/sd15_post/labels.jsonl").read_text().splitlines()]
    latents = load_file(str(res / "data/sd15_post_latents.safetensors"))
    assert len(labels) == 8 and latents["mean"].shape == (8, 4, 8, 8)
    ref = [json.loads(ln) for ln in (res / "data/coco_reference/labels.jsonl").read_text().splitlines()]
    assert len(ref) == 6 and Image.open(res / "data/coco_reference/images" / ref[0]["file"]).size == (32, 32)
    stats = {}
    for es, n in [("sd15-post-n2-r2-s2", 2), ("sd15-post-n1-r2-s2", 1), ("sd15-post-n1-r4-s2", 1)]:
        for i in range(n):
            d = res / f"experts/{es}/expert{i}"
            weights = load_file(str(d / "pytorch_lora_weights.safetensors"))
            # the text encoder's LoRA trained in its own group (B starts at zero)
            assert any(k.startswith("text_encoder.") and "lora_B" in k and v.abs().sum() > 0
                       for k, v in weights.items())
            stats[(es, i)] = json.loads((d / "stats.json").read_text())
            assert stats[(es, i)]["family"] == "sd15"
    # vanilla LoRA r4 has exactly the parameters of the two r2 core experts
    assert stats[("sd15-post-n1-r4-s2", 0)]["trainable_params"] == sum(
        stats[("sd15-post-n2-r2-s2", i)]["trainable_params"] for i in range(2))
    assert (res / "runs/tsm2_sd15/router/router.safetensors").is_file()
    assert_stock_pipeline_reproduces(tmp_path / "pipeline", res / "experts/sd15-post-n2-r2-s2/expert1")
    assert_load_run_reproduces_the_dag_s_samples(config, work, res)
    for run in runs:
        pngs = sorted((res / f"runs/{run}/fid_samples").glob("*.png"))
        assert len(pngs) == 4 and np.asarray(Image.open(pngs[0])).shape == (32, 32, 3)
    for rule in ["encode_image_text", "coco_reference", "train_expert", "assemble_router", "evaluate_run_fid"]:
        assert list((res / "logs" / rule).glob("*.log")), rule
    assert not (res / "models").exists()  # no miniature foundation was built

    # FID with a stand-in for clean-fid's Inception file loaded from evaluation.fid.inception_weights
    ref = np.load(res / "data/fid_reference_coco_inception.npz")
    # its own features kept for precision/recall (evaluation.fid.precision_recall in the paper models' configs)
    assert ref["mu"].shape == (2048,) and int(ref["n"]) == 6 and ref["features"].shape == (6, 2048)
    patch = np.load(res / "data/fid_reference_coco_inception_patch.npz")
    assert int(patch["n"]) == 24 and str(patch["feature_space"]) == "inception_patch"
    fids = [json.loads((res / f"runs/{run}/fid.json").read_text()) for run in runs]
    assert all(f["feature_space"] == "inception" and f["n_samples"] == 4 and f["fid"] > 0 for f in fids)
    assert all(f["patch"]["n_samples"] == 16 and 0 <= f["precision"] <= 1 for f in fids)
    assert all(f["clip"]["clip_n"] == 4 and -1 <= f["clip"]["clip_score"] <= 1 for f in fids)  # the tiny local CLIP
    table = pd.read_csv(res / "tables/tsm_table12.csv", dtype=str)
    assert table["row"].tolist() == ["SD1.5 (pre-trained)", "SD1.5 + vanilla LoRA r2", "SD1.5 + vanilla LoRA r4",
                                     "SD1.5 + TSM 1-stage", "SD1.5 + TSM 2-stage"]
    fid_col = next(c for c in table.columns if c.startswith("FID") and "TSM Table 12" not in c)
    assert table[fid_col].tolist() == [f"{f['fid']:.2f}" for f in fids]
    assert table["Trainable params"].iloc[2] == table["Trainable params"].iloc[3]  # LoRA r4 = TSM 1-stage
    assert not any("TSM Table 12" in c for c in table.columns)  # the paper post-pretrains PixArt-alpha only
    assert (res / "tables/tsm_table12.md").is_file() and (res / "tables/tsm_table12.tex").is_file()


@pytest.mark.slow  # not in the smoke group: it needs no smoke output, so the other worker takes it
@pytest.mark.parametrize("name,dtype", [("pixart", "float16"), ("sd3", "float32")])
def test_tiny_pixart_in_half_precision_and_sd3_with_t5_run_to_tsm_fid(snakemake_bin, root, tmp_path, name, dtype):
    """The two transformer families through the same rules, to TSM 2-stage's FID: PixArt-alpha in the configs'
    float16 (LoRA on its T5), SD3 with its T5 encoder (LoRA on both CLIPs, per-encoder targets, none on T5)."""
    build_pipeline(NAMES[name], tmp_path / "tokenizer_src").save_pretrained(tmp_path / "pipeline")
    write_fixture_data(tmp_path)
    config = tiny_config(root, tmp_path, name, dtype)
    work = tmp_path / "work"
    res = work / "results"
    r = run_smoke(snakemake_bin, root, work, f"results/runs/tsm2_{name}/fid.json", "--cores", "1",
                  configfile=config, timeout=HANG)
    assert r.returncode == 0, r.stderr[-4000:]
    fid = json.loads((res / f"runs/tsm2_{name}/fid.json").read_text())
    assert fid["n_samples"] == 4 and np.isfinite(fid["fid"]) and fid["fid"] > 0
    latents = load_file(str(res / f"data/{name}_post_latents.safetensors"))
    assert latents["mean"].dtype == getattr(torch, dtype)  # the cache keeps the VAE's precision
    weights = load_file(str(res / f"experts/{name}-post-n2-r2-s2/expert0/pytorch_lora_weights.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values())  # adapters train in fp32 over a half model
    parts = {k.split(".", 1)[0] for k in weights}
    assert parts == ({"transformer", "text_encoder"} if name == "pixart"
                     else {"transformer", "text_encoder", "text_encoder_2"})  # SD3: T5 (text_encoder_3) untouched
    assert any(k.startswith("transformer.") and "lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def assert_stock_pipeline_reproduces(pipeline, expert):
    """A trained expert (alpha = 3 x rank) loaded by stock `load_lora_weights` gives our loader's outputs."""
    import torch
    from diffusers import StableDiffusionPipeline

    from tsmflow.adapters.lora import load_lora
    from tsmflow.models.backbone import load_backbone
    spec = {"family": "sd15", "pretrained": str(pipeline), "local_files_only": True}
    ours, base = load_backbone(spec), load_backbone(spec)
    lora = load_lora(ours, expert, "e")
    assert lora.alpha == 3 * lora.rank
    pipe = StableDiffusionPipeline.from_pretrained(pipeline, local_files_only=True)
    pipe.load_lora_weights(expert)
    x, t = torch.randn(2, *ours.latent_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([50, 700])
    with torch.no_grad():
        cond = ours.encode(CAPTIONS[:2])
        stock_hidden, _ = pipe.encode_prompt(CAPTIONS[:2], "cpu", 1, do_classifier_free_guidance=False)
        assert torch.allclose(stock_hidden, cond["hidden"], atol=1e-5)
        want = ours.predict(x, t, cond)
        got = pipe.unet(x, t, encoder_hidden_states=stock_hidden).sample
        assert torch.allclose(got, want, atol=1e-4)
        assert (want - base.predict(x, t, base.encode(CAPTIONS[:2]))).abs().max() > 1e-4  # the expert acts


def assert_load_run_reproduces_the_dag_s_samples(config, work, res, runs=("tsm1_sd15", "tsm2_sd15")):
    """`runs.load_run`, the documented way to use a trained run from Python, gives the DAG's own samples."""
    from tsmflow.sampling.sample import generate
    sampling = load_config(config)["backbones"]["sd15"]["sampling"]
    for run in runs:
        first = json.loads((res / f"runs/{run}/fid_samples/labels.jsonl").read_text().splitlines()[0])
        bb = runs_lib.load_run(config, run, workdir=work)
        image = generate(bb, [first["caption"]], [first["seed"]], steps=sampling["steps"],
                         guidance_scale=sampling["guidance_scale"], solver=sampling["solver"], progress=False)[0]
        dag = np.asarray(Image.open(res / f"runs/{run}/fid_samples" / first["file"]))
        assert np.abs(image.astype(int) - dag.astype(int)).max() <= 1, run
    with pytest.raises(Exception, match="not one of this config's runs"):
        runs_lib.load_run(config, "tsm3_sd15", workdir=work)


def distill_config(root, tmp, dtype: str = "float16"):
    """tiny_config with the default config's SD1.5 students at tiny sizes (rank 2, 2 steps, batch 2): the same
    students, runs and tables a cluster run of config/backbones/sd15.yaml builds."""
    cfg = yaml.safe_load(tiny_config(root, tmp, "sd15", dtype, patch_fid=True).read_text())
    default = load_config(root / "config/config.yaml")
    students = {k: copy.deepcopy(v) for k, v in default["students"].items() if v["backbone"] == "sd15"}
    for s in students.values():
        s.update(steps=2, fake_updates_per_student=1)
        s["train"] = {**s["train"], "batch_size": 2, "grad_accum": 1, "lr": 1e-2, "checkpoint_every": 0}
        if s["adapter"] != "tsm2":
            s["rank"] = 2
        s["fake"]["rank"] = 2
    runs = {k: v for k, v in default["runs"].items() if v["backbone"] == "sd15" and v["method"] == "distill"}
    cfg["runs"].update(runs)
    tables = {t: {**default["tables"][t], "rows": [r for r in default["tables"][t]["rows"]
                                                   if r.get("run", "").endswith("_sd15")]}
              for t in ("tsm_table6", "wadi_main")}
    cfg.update(students=students, distill=default["distill"], tables=tables,
               parts={"distill": ["tsm_table6", "wadi_main"]})
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return tmp / "config.yaml", students


@pytest.mark.slow  # not in the smoke group: it needs no smoke output, so the other worker takes it
def test_tiny_sd15_in_half_precision_distils_lorad_lora_and_tsm_students_through_the_stage_rules(
        snakemake_bin, root, tmp_path):
    """The default config's SD1.5 students (WaDi's one-step LoRaD, TSM Table 6's 4-step LoRA, 1-stage and 2-stage)
    from a tiny random pipeline in float16, through distill_student and evaluate_run_fid to their tables."""
    build_pipeline("sd15", tmp_path / "tokenizer_src").save_pretrained(tmp_path / "pipeline")
    write_fixture_data(tmp_path)
    config, students = distill_config(root, tmp_path)
    work = tmp_path / "work"
    res = work / "results"
    r = run_smoke(snakemake_bin, root, work, "results/tables/tsm_table6.md", "results/tables/wadi_main.md",
                  "results/plots/wadi_main_weight_change.png", "--cores", "1", configfile=config, timeout=HANG)
    assert r.returncode == 0, r.stderr[-4000:]
    assert set(students) == {"sd15-1step-lorad-r256", "sd15-4step-lora-r64", "sd15-4step-tsm-r64", "sd15-4step-tsm2"}
    stats = {s: json.loads((res / f"students/{s}/stats.json").read_text()) for s in students}
    assert stats["sd15-1step-lorad-r256"]["nfe"] == 1 and stats["sd15-4step-lora-r64"]["nfe"] == 4
    assert stats["sd15-1step-lorad-r256"]["adapter"] == "lorad" and stats["sd15-4step-tsm2"]["experts"] == [4, 1]
    # the merged one-step student is the pipeline's UNet class, in the pipeline's precision, and it moved
    from diffusers import UNet2DConditionModel
    teacher = UNet2DConditionModel.from_pretrained(tmp_path / "pipeline/unet")
    student = UNet2DConditionModel.from_pretrained(res / "students/sd15-1step-lorad-r256")
    saved = load_file(str(res / "students/sd15-1step-lorad-r256/diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float16}
    moved = [(a.float() - b.float()).abs().max() for (_, a), (_, b) in
             zip(teacher.named_parameters(), student.named_parameters()) if a.shape == b.shape]
    assert max(moved) > 0
    assert stats["sd15-1step-lorad-r256"]["direction_change"] > 0
    # LoRA r64 with alpha 8 in the config: the saved scale is alpha / rank, here 8 / 2
    from tsmflow.adapters.lora import read_lora_spec
    spec, _ = read_lora_spec(res / "students/sd15-4step-lora-r64/adapter")
    assert (spec.rank, spec.alpha) == (2, 8.0)
    assert "time_emb_proj" in spec.denoiser_targets and "conv1" in spec.denoiser_targets
    for run in ["base_sd15", "dmd4_lora_sd15", "dmd4_tsm1_sd15", "dmd4_tsm2_sd15", "wadi_lorad_sd15"]:
        fid = json.loads((res / f"runs/{run}/fid.json").read_text())
        assert fid["feature_space"] == "inception" and fid["n_samples"] == 4 and np.isfinite(fid["fid"]), run
        # Patch-FID on Inception (4 quadrants per sample) and precision/recall on the kept COCO features
        assert fid["patch"]["feature_space"] == "inception_patch" and fid["patch"]["n_samples"] == 16, run
        assert 0 <= fid["precision"] <= 1 and 0 <= fid["recall"] <= 1, run
    table = pd.read_csv(res / "tables/tsm_table6.csv", dtype=str).set_index("runs")
    assert table.loc["dmd4_tsm1_sd15", "NFEs"] == "4" and table.loc["dmd4_tsm2_sd15", "FID [TSM Table 6]"] == "9.90"
    wadi = pd.read_csv(res / "tables/wadi_main.csv", dtype=str).set_index("runs")
    assert wadi.loc["wadi_lorad_sd15", "NFEs"] == "1"
    assert wadi.loc["wadi_lorad_sd15", "Trainable params (M) [WaDi Table main]"] == "83.80"  # not the 860 total
    assert wadi.loc["wadi_lorad_sd15", "FID [WaDi Table main]"] == "10.79"
    assert (res / "plots/wadi_main_weight_change.png").stat().st_size > 0


def further_training_config(root, tmp, dtype: str = "float16"):
    """tiny_config with the default config's SD1.5 further training at tiny sizes: DMP Table 2's full fine-tuning,
    prompt tuning and DMP, and DeMe's range models (2 of them) with its merge search, through their own runs and
    tables (dmp_table1, dmp_table2, deme_sd15): the keys a cluster run of config/backbones/sd15.yaml reads."""
    cfg = yaml.safe_load(tiny_config(root, tmp, "sd15", dtype).read_text())
    default = load_config(root / "config/config.yaml")
    tiny_train = {"batch_size": 2, "grad_accum": 1, "lr": 1e-2, "checkpoint_every": 0}
    finetunes = {k: {**v, "steps": 2, "train": {**v["train"], **tiny_train}}
                 for k, v in default["finetunes"].items() if v["backbone"] == "sd15"}
    deme_set = default["deme_sets"]["sd15-post-n4-p30"]
    deme_sets = {"sd15-post-n4-p30": {**deme_set, "n": 2, "steps": 2,
                                      "train": {**deme_set["train"], **tiny_train, "lr": 1e-3}}}
    cfg["deme"]["search"].update(n_samples=2, steps=2, step=0.5, min_step=0.5, max_evals=3)
    runs = {k: v for k, v in default["runs"].items() if v["backbone"] == "sd15" and
            (v["method"] in ("deme_ensemble", "deme_merged") or v.get("finetune") in finetunes)}
    cfg["runs"] = {"base_sd15": cfg["runs"]["base_sd15"], **runs}
    tables = {t: {**default["tables"][t], "rows": [r for r in default["tables"][t]["rows"]
                                                   if r.get("run", "").endswith("_sd15")]}
              for t in ("dmp_table1", "dmp_table2", "deme_sd15")}
    cfg.update(finetunes=finetunes, deme_sets=deme_sets, tables=tables,
               parts={"dmp": ["dmp_table1", "dmp_table2"], "post_pretraining": ["deme_sd15"]})
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return tmp / "config.yaml"


@pytest.mark.slow  # not in the smoke group: it needs no smoke output, so the other worker takes it
def test_tiny_sd15_in_half_precision_runs_dmp_and_deme_through_the_stage_rules(snakemake_bin, root, tmp_path):
    """DMP Table 2's further training and DeMe on a tiny random SD1.5 in float16: the same stage rules as the
    miniature (train_full, train_dmp, deme_finetune_range, deme_merge_search on Inception FID), to their tables."""
    from diffusers import UNet2DConditionModel
    build_pipeline("sd15", tmp_path / "tokenizer_src").save_pretrained(tmp_path / "pipeline")
    write_fixture_data(tmp_path)
    config = further_training_config(root, tmp_path)
    work = tmp_path / "work"
    res = work / "results"
    r = run_smoke(snakemake_bin, root, work, "--cores", "1", configfile=config, timeout=HANG)
    assert r.returncode == 0, r.stderr[-4000:]

    teacher = UNet2DConditionModel.from_pretrained(tmp_path / "pipeline/unet")
    n_unet = sum(p.numel() for p in teacher.parameters())
    # full fine-tuning and the range models keep fp32 weights over the half-precision pipeline, and they moved
    for d in [res / "finetune/sd15-post-full", *[res / f"deme/sd15-post-n4-p30/range{i}" for i in range(2)]]:
        saved = load_file(str(d / "diffusion_pytorch_model.safetensors"))
        assert {v.dtype for v in saved.values()} == {torch.float32}, d
        base = dict(teacher.state_dict())
        assert max((v - base[k].float()).abs().max() for k, v in saved.items()) > 0, d
    # DMP and prompt tuning: the patch trained, the denoiser did not (it is the pipeline's)
    for name in ("sd15-post-dmp", "sd15-post-pt"):
        stats = json.loads((res / f"finetune/{name}/stats.json").read_text())
        assert stats["denoiser_params"] == n_unet and stats["added_params"] > 0
        patch = load_file(str(res / f"finetune/{name}/dmp.safetensors"))
        assert any(k.startswith("prompts") and v.abs().sum() > 0 for k, v in patch.items()), name
    weights = json.loads((res / "deme/sd15-post-n4-p30/merged/weights.json").read_text())
    assert len(weights["weights"]) == 2 and "inception" in weights["objective_name"] and weights["n_evals"] >= 1
    runs = ["base_sd15", "full_sd15", "pt_sd15", "dmp_sd15", "deme_before_sd15", "deme_after_sd15"]
    assert_load_run_reproduces_the_dag_s_samples(config, work, res, runs[1:])
    fids = {run: json.loads((res / f"runs/{run}/fid.json").read_text()) for run in runs}
    assert all(f["feature_space"] == "inception" and f["n_samples"] == 4 and np.isfinite(f["fid"])
               for f in fids.values())
    samples = {run: np.asarray(Image.open(sorted((res / f"runs/{run}/fid_samples").glob("*.png"))[0]))
               for run in runs}
    assert all(not np.array_equal(samples["base_sd15"], samples[run]) for run in ("full_sd15", "dmp_sd15"))

    t1 = pd.read_csv(res / "tables/dmp_table1.csv", dtype=str).set_index("runs")
    assert t1.loc["dmp_sd15", "Denoiser params (M)"] == f"{n_unet / 1e6:.4f}"  # counted from the pipeline's UNet
    assert float(t1.loc["dmp_sd15", "Increase (%)"]) > 0
    assert (t1.loc["dmp_sd15", "#Parameters (M), without DMP [DMP Table 1]"],
            t1.loc["dmp_sd15", "#Parameters (M), with DMP [DMP Table 1]"]) == ("890", "892")
    t2 = pd.read_csv(res / "tables/dmp_table2.csv", dtype=str).set_index("runs")
    assert list(t2.index) == runs[:4] and t2.loc["dmp_sd15", "FID [DMP Table 2]"] == "35.44"
    deme = pd.read_csv(res / "tables/deme_sd15.csv", dtype=str).set_index("runs")
    assert list(deme.index) == ["base_sd15", "deme_before_sd15", "deme_after_sd15"]
    assert (res / "plots/dmp_activation_sd15-post-dmp.png").stat().st_size > 0
