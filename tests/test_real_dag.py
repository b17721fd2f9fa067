"""The real DAG (rules/real.smk): each backbone spec's dry run lists the jobs a cluster would run, and a tiny
random SD1.5 pipeline runs the DAG for real, from image-text data and COCO captions in their published formats."""
from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import run_smoke, save_inception_stand_in
from tsmflow import backbone_spec, realscale
from tsmflow.config import load_backbone_config
from tsmflow.reporting.tables import build_table
from test_backbones import build_pipeline

SPECS = ["sd15", "sd2", "pixart_alpha", "sd3"]
ARCH = {"sd15": "unet", "sd2": "unet", "pixart_alpha": "dit", "sd3": "mmdit"}
# core n=8 (8 jobs) + context n=1 (1) + vanilla LoRA r32 (1); five runs sampled and scored
JOBS = {"real_encode_latents": 1, "real_coco_reference": 1, "real_fid_reference_stats": 1, "real_train_expert": 10,
        "real_assemble_router": 1, "real_sample_fid": 5, "real_compute_fid": 5, "real_table": 1, "all": 1}


def job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def dry_run(snakemake_bin, root, workdir, configfile):
    return subprocess.run([snakemake_bin, "-n", "-s", str(root / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(configfile)], capture_output=True, text=True, timeout=300)


def with_fixture_data(root, tmp, name: str, **changes):
    """A shipped spec with its placeholder data paths pointed at fixture data in the published formats."""
    write_fixture_data(tmp)
    spec = yaml.safe_load((root / f"config/backbones/{name}.yaml").read_text())
    spec["data"] = {"train": {"image_text_folder": str(tmp / "laion")},
                    "coco": {"annotations": str(tmp / "coco/annotations/captions_val2014.json"),
                             "images": str(tmp / "coco/val2014")}}
    spec.update(changes)
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    return tmp / "spec.yaml"


@pytest.mark.parametrize("spec", SPECS)
def test_backbone_spec_dry_run_lists_the_cluster_jobs(snakemake_bin, root, tmp_path, spec):
    r = dry_run(snakemake_bin, root, tmp_path / "work", with_fixture_data(root, tmp_path, spec))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert job_counts(r.stdout) == JOBS
    arch = ARCH[spec]
    for name, n in [(f"{arch}-post-n8-r4-s4000", 8), (f"{arch}-post-n1-r4-s4000", 1), (f"{arch}-post-n1-r32-s4000", 1)]:
        for i in range(n):
            assert f"results/real/{spec}/experts/{name}/expert{i}" in r.stdout
    for run in ["base", "lora_r4", "lora_r32", "tsm1", "tsm2"]:
        assert f"results/real/{spec}/runs/{run}/fid.json" in r.stdout
    assert not (tmp_path / "work/results").exists()


def test_placeholder_data_and_absent_offline_inception_weights_fail_before_any_job(snakemake_bin, root, tmp_path):
    r = dry_run(snakemake_bin, root, tmp_path, root / "config/backbones/sd15.yaml")  # /data/... placeholders
    assert r.returncode != 0 and "config key data.train.image_text_folder: /data/laion-pop/ is not a directory" in (
        r.stdout + r.stderr)
    spec = with_fixture_data(root, tmp_path, "sd15", local_files_only=True)
    r = dry_run(snakemake_bin, root, tmp_path / "work", spec)
    assert r.returncode != 0 and "config key fid.inception_weights: an offline spec" in r.stdout + r.stderr
    cfg = yaml.safe_load(spec.read_text())
    cfg["fid"]["inception_weights"] = str(tmp_path / "absent.pt")
    spec.write_text(yaml.safe_dump(cfg))
    r = dry_run(snakemake_bin, root, tmp_path / "work", spec)
    assert r.returncode != 0 and f"fid.inception_weights: {tmp_path / 'absent.pt'} is not a file" in r.stdout + r.stderr


def test_bad_backbone_spec_fails_before_any_job(snakemake_bin, root, tmp_path):
    spec = yaml.safe_load(with_fixture_data(root, tmp_path, "sd15").read_text())
    spec["optim"]["grad_accum"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    r = dry_run(snakemake_bin, root, tmp_path, tmp_path / "bad.yaml")
    assert r.returncode != 0 and "global_batch_size=64 is not a multiple of optim.grad_accum=3" in r.stdout + r.stderr
    del spec["data"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    r = dry_run(snakemake_bin, root, tmp_path, tmp_path / "bad.yaml")
    assert r.returncode != 0 and "'data' is a required property" in r.stdout + r.stderr


def test_run_fingerprint_changes_with_the_trained_weights_and_the_spec(tmp_path):
    expert = tmp_path / "expert"
    expert.mkdir()
    (expert / "adapter.safetensors").write_bytes(b"weights-1")
    spec, run = {"family": "sd15", "pretrained": "some/model"}, {"method": "lora"}
    key = realscale.run_fingerprint(spec, run, [expert])
    assert realscale.run_fingerprint(spec, run, [expert]) == key
    assert realscale.run_fingerprint({**spec, "pretrained": "other/model"}, run, [expert]) != key
    (expert / "adapter.safetensors").write_bytes(b"weights-2")
    assert realscale.run_fingerprint(spec, run, [expert]) != key


def test_pixart_table_cites_tsm_table12_as_reference(root):
    spec = load_backbone_config(root / "config/backbones/pixart_alpha.yaml")
    decl = backbone_spec.table_decl(spec)
    metrics = {r: {"fid": 20.0, "fid_n_samples": 30000, "fid_feature_space": "inception"}
               for r in backbone_spec.runs(spec)}
    df = build_table(decl, metrics).set_index("runs")
    assert df.loc["base", "FID [TSM Table 12]"] == "23.15" and df.loc["tsm2", "FID [TSM Table 12]"] == "16.78"
    assert df.loc["lora_r32", "FID [TSM Table 12]"] == "—"  # the paper has no such row
    assert "for reference only" in decl["caption"]


# ---------------------------------------------------------------- a tiny SD1.5 through the real DAG

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


def tiny_spec(root, tmp, family: str = "sd15", dtype: str = "float32"):
    """A shipped spec with the tiny pipeline, the fixture data and tiny sizes: the same keys a cluster run uses."""
    spec = yaml.safe_load((root / f"config/backbones/{family}.yaml").read_text())
    spec.update(pretrained=str(tmp / "pipeline"), local_files_only=True, dtype=dtype, resolution=32,
                checkpoint_every=0, gpus_per_job=0, tsm={"core": 2, "context": [1]})
    spec["lora"].update(rank=2, alpha=6)  # alpha != rank: exported files must carry the scale alpha / rank
    spec["optim"].update(global_batch_size=4, grad_accum=2, steps=2)
    for part in ("denoiser", "text_encoder"):
        spec["optim"][part]["lr"] = 1e-2  # each its own AdamW group: visibly moves in 2 steps
    spec["data"] = {"train": {"image_text_folder": str(tmp / "laion")},
                    "coco": {"annotations": str(tmp / "coco/annotations/captions_val2014.json"),
                             "images": str(tmp / "coco/val2014")}}
    spec["fid"].update(n_samples=4, n_reference=6, reference_resolution=32, steps=2, batch_size=4,
                       inception_weights=str(save_inception_stand_in(tmp / "inception/inception.pt")))
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    return tmp / "spec.yaml"


@pytest.mark.slow  # not in the smoke group: it needs no smoke output, so the other worker takes it
def test_tiny_sd15_runs_the_real_dag(snakemake_bin, root, tmp_path):
    build_pipeline("sd15", tmp_path / "tokenizer_src").save_pretrained(tmp_path / "pipeline")
    write_fixture_data(tmp_path)
    spec = tiny_spec(root, tmp_path)
    work = tmp_path / "work"
    res = work / "results/real/sd15"
    runs = ["base", "lora_r2", "lora_r4", "tsm1", "tsm2"]
    samples = [f"results/real/sd15/runs/{r}/fid_samples" for r in runs]
    r = run_smoke(snakemake_bin, root, work, *samples, "--cores", "1", configfile=spec, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]

    labels = [json.loads(ln) for ln in (res / "data/train_labels.jsonl").read_text().splitlines()]
    latents = load_file(str(res / "data/train_latents.safetensors"))
    assert len(labels) == 8 and latents["mean"].shape == (8, 4, 8, 8)
    ref = [json.loads(ln) for ln in (res / "coco_reference/labels.jsonl").read_text().splitlines()]
    assert len(ref) == 6 and Image.open(res / "coco_reference" / ref[0]["file"]).size == (32, 32)
    stats = {}
    for es, n in [("unet-post-n2-r2-s2", 2), ("unet-post-n1-r2-s2", 1), ("unet-post-n1-r4-s2", 1)]:
        for i in range(n):
            d = res / f"experts/{es}/expert{i}"
            weights = load_file(str(d / "pytorch_lora_weights.safetensors"))
            # the text encoder's LoRA trained in its own group (B starts at zero)
            assert any(k.startswith("text_encoder.") and "lora_B" in k and v.abs().sum() > 0
                       for k, v in weights.items())
            stats[(es, i)] = json.loads((d / "stats.json").read_text())
    # vanilla LoRA r4 has exactly the parameters of the two r2 core experts
    assert stats[("unet-post-n1-r4-s2", 0)]["trainable_params"] == sum(
        stats[("unet-post-n2-r2-s2", i)]["trainable_params"] for i in range(2))
    assert (res / "runs/tsm2/router/router.safetensors").is_file()
    assert_stock_pipeline_reproduces(tmp_path / "pipeline", res / "experts/unet-post-n2-r2-s2/expert1")
    assert_load_run_reproduces_the_dag_s_samples(spec, work, res)
    for run in runs:
        pngs = sorted((res / f"runs/{run}/fid_samples").glob("*.png"))
        assert len(pngs) == 4 and np.asarray(Image.open(pngs[0])).shape == (32, 32, 3)
    for rule in ["real_encode_latents", "real_coco_reference", "real_train_expert", "real_assemble_router",
                 "real_sample_fid"]:
        assert list((res / "logs" / rule).glob("*.log")), rule

    # FID through its rules, with a stand-in for clean-fid's Inception file loaded from fid.inception_weights
    r = run_smoke(snakemake_bin, root, work, "--cores", "1", configfile=spec, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    ref = np.load(res / "coco_reference_inception.npz")
    assert ref["mu"].shape == (2048,) and int(ref["n"]) == 6
    fids = [json.loads((res / f"runs/{run}/fid.json").read_text()) for run in runs]
    assert all(f["feature_space"] == "inception" and f["n_samples"] == 4 and f["fid"] > 0 for f in fids)
    table = pd.read_csv(res / "tables/post_pretraining.csv", dtype=str)
    assert table["row"].tolist() == ["SD1.5 (pre-trained)", "SD1.5 + vanilla LoRA r2", "SD1.5 + vanilla LoRA r4",
                                     "SD1.5 + TSM 1-stage", "SD1.5 + TSM 2-stage"]
    assert table["FID (inception features)"].tolist() == [f"{f['fid']:.2f}" for f in fids]
    assert table["Trainable params"].iloc[2] == table["Trainable params"].iloc[3]  # LoRA r4 = TSM 1-stage
    assert not any("TSM Table 12" in c for c in table.columns)  # the paper post-pretrains PixArt-alpha only
    assert (res / "tables/post_pretraining.md").is_file() and (res / "tables/post_pretraining.tex").is_file()


@pytest.mark.slow  # not in the smoke group: it needs no smoke output, so the other worker takes it
@pytest.mark.parametrize("family,dtype", [("pixart_alpha", "float16"), ("sd3", "float32")])
def test_tiny_pixart_in_half_precision_and_sd3_with_t5_run_the_real_dag_to_tsm_fid(snakemake_bin, root, tmp_path,
                                                                                    family, dtype):
    """The two transformer families through the same rules, to TSM 2-stage's FID: PixArt-alpha in the specs'
    float16 (LoRA on its T5), SD3 with its T5 encoder (LoRA on both CLIPs, per-encoder targets, none on T5)."""
    build_pipeline(family, tmp_path / "tokenizer_src").save_pretrained(tmp_path / "pipeline")
    write_fixture_data(tmp_path)
    spec = tiny_spec(root, tmp_path, family, dtype)
    work = tmp_path / "work"
    res = work / f"results/real/{family}"
    r = run_smoke(snakemake_bin, root, work, f"results/real/{family}/runs/tsm2/fid.json", "--cores", "1",
                  configfile=spec, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    fid = json.loads((res / "runs/tsm2/fid.json").read_text())
    assert fid["n_samples"] == 4 and np.isfinite(fid["fid"]) and fid["fid"] > 0
    arch = ARCH[family]
    latents = load_file(str(res / "data/train_latents.safetensors"))
    assert latents["mean"].dtype == getattr(torch, dtype)  # the cache keeps the VAE's precision
    weights = load_file(str(res / f"experts/{arch}-post-n2-r2-s2/expert0/pytorch_lora_weights.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values())  # adapters train in fp32 over a half model
    parts = {k.split(".", 1)[0] for k in weights}
    assert parts == ({"transformer", "text_encoder"} if family == "pixart_alpha"
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


def assert_load_run_reproduces_the_dag_s_samples(spec, work, res):
    """`realscale.load_run`, the documented way to use a trained run from Python, gives the DAG's own samples."""
    from tsmflow.sampling.sample import generate
    cfg = yaml.safe_load(spec.read_text())
    for run in ("tsm1", "tsm2"):
        first = json.loads((res / f"runs/{run}/fid_samples/labels.jsonl").read_text().splitlines()[0])
        bb = realscale.load_run(spec, run, workdir=work)
        image = generate(bb, [first["caption"]], [first["seed"]], steps=cfg["fid"]["steps"],
                         guidance_scale=cfg["fid"]["guidance_scale"], progress=False)[0]
        dag = np.asarray(Image.open(res / f"runs/{run}/fid_samples" / first["file"]))
        assert np.abs(image.astype(int) - dag.astype(int)).max() <= 1, run
    with pytest.raises(Exception, match="not one of this spec's runs"):
        realscale.load_run(spec, "tsm3", workdir=work)
