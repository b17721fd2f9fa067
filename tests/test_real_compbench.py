"""Domain adaptation at real scale through the stage rules: a tiny random SD1.5 pipeline, a prompt folder in
T2I-CompBench's format (CRLF lines, a repeated prompt, complex_val_spatial.txt), GORS by its recipe, experts and a
router, and the six categories scored by tiny random BLIP-VQA, CLIP and OWLv2 models, to TSM Table 4's SD1.5 rows."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml

from conftest import run_smoke
from tsmflow.config import load_config
from test_real_backbones import tiny_config, write_fixture_data
from test_backbones import build_pipeline
from test_t2i_compbench_scorers import save_tiny_scorers

PROMPTS = {  # in the tiny pipeline's vocabulary; color repeats a line, as T2I-CompBench's train files do
    "color": ["a red circle and a blue square", "a blue circle and a red square", "a red circle and a blue square"],
    "shape": ["a red circle and a red square", "a blue square and a blue circle"],
    "texture": ["a blue circle", "a red square"],
    "spatial": ["a red circle on the left of a blue square", "a blue circle on the right of a red square"],
    "non_spatial": ["a red circle and a square", "a blue circle and a circle"],
    "complex": ["the red circle is on the left of the blue square", "a blue circle and a red square"],
}


def write_t2i_compbench_prompts(folder):
    folder.mkdir(parents=True)
    for cat, lines in PROMPTS.items():
        for split in ("train", "val"):
            (folder / f"{cat}_{split}.txt").write_bytes("\r\n".join(lines).encode("utf-8"))  # CRLF, no final EOL
    (folder / "complex_val_spatial.txt").write_text(PROMPTS["complex"][0] + "\n")
    (folder / "complex_val_action.txt").write_text("a man is holding a red phone\n")
    return folder


@pytest.mark.slow  # not in the smoke group: it needs no smoke output
def test_tiny_sd15_domain_adaptation_on_t2i_compbench_through_the_stage_rules(snakemake_bin, root, tmp_path):
    build_pipeline("sd15", tmp_path / "tokenizer_src").save_pretrained(tmp_path / "pipeline")
    write_fixture_data(tmp_path)
    config = tiny_config(root, tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["t2i_compbench"] = {"prompts": str(write_t2i_compbench_prompts(tmp_path / "t2i_compbench")),
                            "scorers": save_tiny_scorers(tmp_path / "scorers")}
    # their recipe: two tiers split at line 1, a strict >; at 0, every image that scores anything is kept
    cfg["gors"].update(images_per_prompt=2, tier_split=1,
                       threshold={c: [0, 0] for c in PROMPTS})
    cfg["evaluation"]["images_per_prompt"] = 2
    core, context = "sd15-gors-n2-r2-s2", "sd15-gors-n1-r2-s2"
    cfg["runs"] = {"lora_gors_sd15": {"method": "lora", "backbone": "sd15", "experts": "sd15-gors-n1-r4-s2"},
                   "tsm1_gors_sd15": {"method": "tsm1", "backbone": "sd15", "experts": core},
                   "tsm2_gors_sd15": {"method": "tsm2", "backbone": "sd15", "core": core, "context": [context]}}
    table = copy.deepcopy(load_config(root / "config/config.yaml")["tables"]["tsm_table4"])
    table["rows"] = [r for r in table["rows"] if r.get("run") in cfg["runs"]]
    assert len(table["rows"]) == 3  # the shipped table's SD1.5 rows
    cfg.update(tables={"tsm_table4": table}, parts={"tsm": ["tsm_table4"]})
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    work = tmp_path / "work"
    res = work / "results"
    r = run_smoke(snakemake_bin, root, work, "results/tables/tsm_table4.md", "--cores", "1", configfile=config,
                  timeout=2400)  # a hang guard; CI runs it beside the smoke DAG
    assert r.returncode == 0, r.stderr[-4000:]

    # GORS: every train line's images in T2I-CompBench's layout, the repeated line with its own images
    gors = res / "gors/sd15"
    summary = json.loads((gors / "summary.json").read_text())
    assert summary["recipe"] == "t2i_compbench"
    assert summary["per_category"]["color"]["generated"] == 3 * 2 and summary["generated"] == 13 * 2
    color = sorted(p.name for p in (gors / "images/color/samples").iterdir())
    assert color == sorted(f"{p}_{i:06d}.png" for i, p in enumerate(l for l in PROMPTS["color"] for _ in range(2)))
    scores = pd.read_csv(gors / "scores.csv")
    labels = [json.loads(ln) for ln in (gors / "labels.jsonl").read_text().splitlines()]
    assert 0 < len(labels) == int((scores["score"] > 0).sum())  # kept: above the 0 threshold, strictly
    assert all(r["reward_loss"] == "mean" and 0 < r["reward"] <= 1 for r in labels)
    assert (res / "gors/sd15_latents.safetensors").is_file()

    # each run's CompBench: val images in T2I-CompBench's layout, scored by the tiny real scorers (percent)
    for run in cfg["runs"]:
        s = pd.read_csv(res / f"runs/{run}/compbench_scores.csv")
        assert s.groupby("category").size().to_dict() == {c: 2 * len(p) for c, p in PROMPTS.items()}
        assert s["score"].between(-100, 100).all()
        assert (s.loc[s["category"] != "non_spatial", "score"] >= 0).all()  # products, cut scores: not cosines
        assert (res / f"runs/{run}/compbench/spatial/samples").is_dir()
        m = json.loads((res / f"runs/{run}/metrics.json").read_text())
        assert m["color"] == pytest.approx(s.loc[s["category"] == "color", "score"].mean(), abs=1e-6)
    table = pd.read_csv(res / "tables/tsm_table4.csv", dtype=str)
    assert table["row"].tolist() == ["SD1.5: Vanilla LoRA (T2I-CompBench)", "SD1.5: TSM 1-stage (T2I-CompBench)",
                                     "SD1.5: TSM 2-stage (T2I-CompBench)"]
    assert any("TSM Table 4" in c for c in table.columns)  # the paper's SD1.5 UNet block beside them
    for rule in ["generate_prompt_images", "encode_prompt_images", "train_expert", "assemble_router", "evaluate_run"]:
        assert list((res / "logs" / rule).glob("*.log")), rule
    assert not (res / "models").exists()  # no miniature foundation (no evaluator) was built
