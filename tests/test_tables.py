"""Config-declared tables: our numbers beside the papers' transcribed ones; plots render."""
import json

import pandas as pd
import pytest

from tsmflow.data.adapters import parse_compbench_name as parse_image_name
from tsmflow.evaluation.scoring import UnvalidatedEvaluatorError, check_validated
from tsmflow.reporting.plots import category_bars, deme_sensitivity_series, fid_bars
from tsmflow.reporting.tables import build_table, load_paper_table, paper_value, write_table

DECL = {"title": "Base models", "caption": "rows are runs", "paper_table": "tsm_table1",
        "columns": ["color", "spatial", "fid"],
        "rows": [{"run": "a", "label": "unet", "paper_row": "SD1.5"},
                 {"runs": ["b1", "b2", "b3"], "label": "dit", "paper_row": "PixArt-α"}]}
METRICS = {"a": {"color": 40.0, "color_se": 1.5, "n_images_color": 200, "spatial": 10.0, "n_images_spatial": 200,
                 "fid": 5.0, "fid_se": 0.25, "fid_n_samples": 500},
           "b1": {"color": 50.0, "spatial": 20.0, "fid": 4.0, "fid_n_samples": 500},
           "b2": {"color": 52.0, "spatial": 22.0, "fid": 4.2, "fid_n_samples": 500},
           "b3": {"color": 54.0, "spatial": 24.0, "fid": 4.4, "fid_n_samples": 500}}


def test_paper_values_come_from_the_transcribed_csv():
    df = load_paper_table("tsm_table1")
    assert paper_value(df, "SD1.5", "color") == "36.97"
    assert paper_value(df, "SD3", "non_spatial") is not None
    assert paper_value(df, "SD1.5", "fid") is None
    t8 = load_paper_table("tsm_table8")
    row = t8.iloc[0]
    assert paper_value(t8, row["row"], {"Col": "color"}.get(row["metric"], row["metric"]), row["block"],
                       row["setting"]) is not None
    with pytest.raises(FileNotFoundError):
        load_paper_table("tsm_table99")


def test_table_has_ours_and_labelled_paper_columns_and_seed_stats(tmp_path):
    df = build_table(DECL, METRICS)
    assert list(df["row"]) == ["unet", "dit"]
    # one seed: ± its standard error where the run has one (spatial has none here); seeds: ± std over them
    assert df.loc[0, "Color"] == "40.00 ± 1.50" and df.loc[0, "Spatial"] == "10.00"
    assert df.loc[0, "FID (shapes features)"] == "5.00 ± 0.25" and df.loc[0, "Images per category"] == "200"
    assert df.loc[1, "Images per category"] == "n/a"
    assert df.loc[0, "Color [TSM Table 1]"] == "36.97"
    assert df.loc[1, "Color"] == "52.00 ± 2.00" and df.loc[1, "seeds"] == 3
    assert df.loc[1, "Spatial [TSM Table 1]"] == "19.89"
    assert "FID [TSM Table 1]" not in df.columns  # Table 1 has no FID: no empty paper column
    assert df.loc[0, "FID samples"] == "500"
    write_table(df, DECL, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    assert pd.read_csv(tmp_path / "t.csv").shape == df.shape
    md = (tmp_path / "t.md").read_text()
    assert "## Base models" in md and "| unet" in md and "rows are runs" in md and "one standard error" in md
    assert "\\begin{tabular}" in (tmp_path / "t.tex").read_text()


def test_plots_render(tmp_path):
    category_bars(DECL, METRICS, tmp_path / "bars.png")
    fid_bars(DECL, METRICS, tmp_path / "fid.png")
    assert (tmp_path / "bars.png").stat().st_size > 5000 and (tmp_path / "fid.png").stat().st_size > 3000


def test_deme_sensitivity_series():
    # the default sweep: N in {1, 2, 4} at p=0.3 (N=1 has no outside, p=0), p in {0, 0.3, 0.6} at N=4
    pts = [(1, 0.0, 30.0), (2, 0.3, 25.0), (4, 0.3, 20.0), (4, 0.0, 22.0), (4, 0.6, 21.0)]
    series = deme_sensitivity_series(pts)
    assert series == {"N (p=0.3)": [(1, 30.0), (2, 25.0), (4, 20.0)],
                      "p (N=4)": [(0.3, 20.0), (0.0, 22.0), (0.6, 21.0)]}  # no "N (p=0)" from N=1 and N=4, p=0
    assert deme_sensitivity_series([(1, 0.0, 30.0), (4, 0.3, 20.0)]) == {}  # one N > 1: no line


def test_scoring_refuses_an_unvalidated_evaluator(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"passed": False}))
    with pytest.raises(UnvalidatedEvaluatorError, match="failed validation"):
        check_validated(tmp_path / "v.json", required=True)
    assert check_validated(tmp_path / "v.json", required=False) is False
    (tmp_path / "v.json").write_text(json.dumps({"passed": True}))
    assert check_validated(tmp_path / "v.json", required=True)


def test_t2i_compbench_image_names():
    from tsmflow.sampling.folders import image_name
    assert image_name("a red circle and a blue square", 7) == "a red circle and a blue square_000007.png"
    assert parse_image_name("a red circle and a blue square_000007.png") == ("a red circle and a blue square", 7)
    with pytest.raises(ValueError):
        parse_image_name("a red circle.png")


def test_run_metrics_of_a_compbench_run_and_an_fid_only_run():
    from tsmflow.evaluation.run import run_metrics
    fid = {"fid": 1.5, "n_samples": 16, "feature_space": "shapes", "evaluator_validated": True}
    # colour: prompt p has images 10, 30 (mean 20) and q has 60, 80 (mean 70): SE = std(20, 70) / sqrt(2) = 25
    scores = pd.DataFrame({"category": ["color"] * 4 + ["shape"], "prompt": ["p", "p", "q", "q", "r"],
                           "score": [10.0, 30.0, 60.0, 80.0, 50.0], "evaluator_validated": [True] * 4 + [False]})
    stats = [{"trainable_params": 100, "model_params": 1000}, {"trainable_params": 100, "model_params": 1000}]
    m = run_metrics("lora_x", {"method": "lora", "backbone": "unet"}, fid, scores, stats)
    assert m["color"] == 45.0 and m["n_images_color"] == 4 and m["n_prompts_color"] == 2 and m["shape"] == 50.0
    assert m["color_se"] == pytest.approx(25.0) and m["shape_se"] is None  # one prompt: no SE
    assert m["evaluator_validated"] is False  # one unvalidated score taints the run
    assert m["fid"] == 1.5 and m["fid_n_samples"] == 16 and m["config_method"] == "lora"
    assert m["trainable_params"] == 200 and m["trainable_pct"] == 20.0
    m = run_metrics("base_x", {"method": "base", "backbone": "unet"}, fid, None, [])
    assert "color" not in m and m["evaluator_validated"] is True and "trainable_params" not in m
    assert "patch_fid" not in m
    m = run_metrics("base_x", {"method": "base", "backbone": "unet"},
                    {**fid, "patch": {"fid": 2.5, "fid_se": 0.1, "n_samples": 64}}, None, [])
    assert m["patch_fid"] == 2.5 and m["patch_fid_se"] == 0.1 and m["fid"] == 1.5 and "nfe" not in m
    assert run_metrics("base_x", {"method": "base", "backbone": "unet"}, fid, None, [], {"steps": 4})["nfe"] == 4


def test_dmp_table1_counts_the_patch_against_the_denoiser_and_cites_both_paper_rows():
    from tsmflow.reporting.tables import trainable_summary
    stats = [{"trainable_params": 2_500, "model_params": 150_000, "denoiser_params": 100_000, "added_params": 2_500}]
    m = trainable_summary({"method": "finetune"}, stats)
    assert m["denoiser_params_m"] == 0.1 and m["patched_params_m"] == 0.1025 and m["param_increase_pct"] == 2.5
    assert "denoiser_params_m" not in trainable_summary({"method": "finetune"}, [{"trainable_params": 9,
                                                                                   "model_params": 10}])
    decl = {"title": "t", "paper_table": "dmp_table1",
            "columns": ["denoiser_params_m", "patched_params_m", "param_increase_pct"],
            "rows": [{"run": "d", "label": "dit", "paper_block": "DiT-B/2", "paper_row": "+ DMP",
                      "paper_rows": {"denoiser_params_m": "DiT-B/2"}}]}
    row = build_table(decl, {"d": m}).iloc[0]
    assert row["Denoiser params (M)"] == "0.1000" and row["With DMP (M)"] == "0.1025" and row["Increase (%)"] == "2.50"
    # the paper's two rows, each in its own labelled reference column
    assert row["#Parameters (M), without DMP [DMP Table 1]"] == "130"
    assert row["#Parameters (M), with DMP [DMP Table 1]"] == "132.5"


def test_a_table_may_name_the_paper_column_a_metric_reads(tmp_path):
    """WaDi's main table prints the whole model's size as "#Params (M)" and the trainable part beside it: the
    trainable-parameter column must read the latter (config tables.wadi_main.paper_metrics)."""
    paper = tmp_path / "wadi_table_main.csv"
    paper.write_text("paper,table,block,row,setting,metric,value,note\n"
                     "wadi,main,B,WaDi,S,#Params (M),860,\nwadi,main,B,WaDi,S,Trainable params (M),83.80,\n")
    decl = {"title": "t", "paper_table": "wadi_table_main", "columns": ["trainable_params_m"],
            "rows": [{"run": "r", "label": "r", "paper_block": "B", "paper_row": "WaDi", "paper_setting": "S"}]}
    metrics = {"r": {"trainable_params_m": 1.5}}
    assert build_table(decl, metrics, tmp_path)["#Params (M) [WaDi Table main]"].tolist() == ["860"]
    named = build_table({**decl, "paper_metrics": {"trainable_params_m": "Trainable params (M)"}}, metrics, tmp_path)
    assert named["Trainable params (M) [WaDi Table main]"].tolist() == ["83.80"]


def test_wadi_rank_reads_the_student_and_the_fake_score_sizes_apart():
    """WaDi Table 3 prints the student's and the fake model's sizes; a distilled run's metrics carry both
    (`trainable_summary` from the student's stats.json), each beside its own paper column."""
    from tsmflow.reporting.tables import trainable_summary
    stats = [{"student_trainable_params": 3_000_000, "fake_trainable_params": 250_000, "model_params": 6_000_000}]
    m = trainable_summary({"method": "distill", "backbone": "unet", "student": "s"}, stats)
    assert m["trainable_params_m"] == 3.0 and m["fake_params_m"] == 0.25 and m["trainable_pct"] == 50.0
    decl = {"title": "t", "paper_table": "wadi_table_rank", "columns": ["trainable_params_m", "fake_params_m"],
            "paper_metrics": {"trainable_params_m": "Student #Params (M)", "fake_params_m": "Fake model #Params (M)"},
            "rows": [{"run": "e", "label": "E", "paper_row": "E", "paper_setting": "student_rank=256;fake_rank=16"}]}
    row = build_table(decl, {"e": m}).iloc[0]
    assert row["Trainable params (M)"] == "3.0000" and row["Fake score params (M)"] == "0.2500"
    assert row["Student #Params (M) [WaDi Table rank]"] == "83.80"
    assert row["Fake model #Params (M) [WaDi Table rank]"] == "4.69"


def test_every_cited_paper_row_of_the_default_tables_resolves_to_a_paper_number():
    """A row naming a paper row (and block, setting) must find at least one of the paper's cells for its table's
    columns: a misspelt row or a missing setting would otherwise print "—" without a word."""
    from pathlib import Path
    import yaml
    root = Path(__file__).resolve().parents[1]
    tables = yaml.safe_load((root / "config/config.yaml").read_text())["tables"]
    missing = []
    for name, decl in tables.items():
        if not decl.get("paper_table"):
            continue
        runs = {r for row in decl["rows"] for r in ([row["run"]] if "run" in row else row["runs"])}
        df = build_table(decl, {r: {c: 1.0 for c in decl["columns"]} for r in runs})
        refs = [c for c in df.columns if c.endswith("]")]
        for row, (_, rec) in zip(decl["rows"], df.iterrows()):
            if (row.get("paper_row") or row.get("paper_setting")) and all(rec.get(c) == "—" for c in refs):
                missing.append(f"{name}: {row['label']}")
    assert not missing, missing
