"""The claims page: verdicts by the stated test on hand-made metrics; the published folder's provenance."""
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tsmflow.data.grammar import CATEGORIES
from tsmflow.reporting.claims import build_claims, group_stats, run_value, verdict, write_claims
from tsmflow.reporting.publish import git_commit, part_jobs, provenance, publish, record_path, write_index, write_site
from tsmflow.reporting.tables import PAPER_DIR


def cb_run(level: float, se: float = 1.0) -> dict:
    return {**{c: level for c in CATEGORIES}, **{f"{c}_se": se for c in CATEGORIES}}


METRICS = {"t0": cb_run(30.0), "t1": cb_run(32.0), "t2": cb_run(34.0),  # mean 32, std 2
           "l0": cb_run(20.0), "l1": cb_run(21.0), "l2": cb_run(22.0),  # mean 21, std 1
           "a": {"fid": 1.00, "fid_se": 0.10}, "b": {"fid": 1.05, "fid_se": 0.10}, "c": {"fid": 2.0, "fid_se": 0.1}}
T4 = {"paper_table": "tsm_table4", "metric": "compbench_mean", "better": "higher"}
CLAIMS_DECL = {
    "tsm2_vs_lora": {**T4, "claim": "TSM 2-stage beats vanilla LoRA",
                     "ours": {"runs": ["t0", "t1", "t2"], "paper_block": "SD1.5 UNet", "paper_row": "TSM 2-stage"},
                     "baseline": {"runs": ["l0", "l1", "l2"], "paper_block": "SD1.5 UNet", "paper_row": "Vanilla LoRA"}},
    "fid": {"paper_table": "deme_supp_table1", "metric": "fid", "better": "lower", "claim": "merge helps",
            "ours": {"runs": ["a"]}, "baseline": {"runs": ["b"]}},
}


def test_run_value_averages_six_categories_and_their_se():
    m = {**{c: float(i) for i, c in enumerate(CATEGORIES)}, **{f"{c}_se": 6.0 for c in CATEGORIES}}
    assert run_value(m, "compbench_mean") == (2.5, pytest.approx(np.sqrt(6 * 36) / 6))
    assert run_value({"fid": 1.5, "fid_se": 0.2}, "fid") == (1.5, 0.2)
    assert run_value({"color": 3.0}, "compbench_mean") == (None, None)


def test_verdicts_follow_the_stated_test():
    ours, base = group_stats(METRICS, ["t0", "t1", "t2"], "compbench_mean"), group_stats(METRICS, ["l0", "l1", "l2"],
                                                                                           "compbench_mean")
    assert ours["mean"] == 32.0 and ours["std"] == pytest.approx(2.0) and ours["n"] == 3
    v = verdict(ours, base, "higher")
    assert v["d"] == pytest.approx(11.0) and v["se"] == pytest.approx(np.sqrt(4 / 3 + 1 / 3))
    assert v["verdict"] == "holds"
    assert verdict(base, ours, "higher")["verdict"] == "does not hold"
    # one run each: SE from the runs' own bootstrap SEs; 0.05 < 2 * sqrt(0.02)
    a, b = group_stats(METRICS, ["a"], "fid"), group_stats(METRICS, ["b"], "fid")
    assert verdict(a, b, "lower")["verdict"] == "within noise"
    assert verdict(group_stats(METRICS, ["a"], "fid"), group_stats(METRICS, ["c"], "fid"), "lower")["verdict"] == "holds"
    assert verdict(group_stats({"x": {"fid": 1.0}}, ["x"], "fid"), b, "lower")["verdict"] == "no standard error"
    same = {"mean": 1.0, "var": 0.0}  # identical seeds: no spread, no difference
    assert verdict(same, same, "lower") == {"d": 0.0, "se": 0.0, "z": 0.0, "verdict": "within noise"}


def test_claims_page_has_paper_numbers_ours_and_verdicts(tmp_path):
    df = build_claims(CLAIMS_DECL, METRICS)
    # the paper's six-category means, computed here straight from the transcribed CSV
    paper = pd.read_csv(PAPER_DIR / "tsm_table4.csv", dtype=str, keep_default_na=False)
    six = {"Color", "Shape", "Texture", "Spatial", "Non-Spatial", "Complex"}

    def mean_of(row):
        sel = paper[(paper.block == "SD1.5 UNet") & (paper.row == row) & paper.metric.isin(six)]
        assert len(sel) == 6
        return sel.value.astype(float).mean()
    r = df.iloc[0]
    assert r["paper: ours"] == f"{mean_of('TSM 2-stage'):.2f}" and r["paper: baseline"] == f"{mean_of('Vanilla LoRA'):.2f}"
    assert r["ours"] == "32.00 ± 2.00 (n=3)" and r["verdict"] == "holds" and r["d ± SE"].startswith("+11.00 ± ")
    assert df.iloc[1]["paper: ours"] == "—" and df.iloc[1]["verdict"] == "within noise"
    assert df.iloc[1]["ours"] == "1.000 ± 0.100 SE (n=1)"
    write_claims(df, tmp_path / "c.csv", tmp_path / "c.md")
    md = (tmp_path / "c.md").read_text()
    assert "2 claims: 1 holds, 1 within noise." in md and "d >= 2 SE" in md
    assert len(pd.read_csv(tmp_path / "c.csv")) == 2


def test_part_jobs_walk_the_metadata_records_upstream_of_the_part(tmp_path):
    """A part's jobs are its inputs' jobs and theirs, read from Snakemake's records: a two-output job counts once,
    a job outside the part not at all, a source file ends the walk; a long path's record sits in "@" folders."""
    meta = tmp_path / "metadata"
    meta.mkdir()
    long = "results/" + "x" * 300 + "/model"
    jobs = {"results/tables/t.md": ("make_table", 900.0, 950.0, ["results/runs/a/metrics.json", "config.yaml"]),
            "results/runs/a/metrics.json": ("evaluate_run", 500.0, 800.0, [long]),
            "results/runs/a/fid.json": ("evaluate_run", 500.0, 800.0, [long]),
            long: ("train", 100.0, 400.0, []),
            "results/other.md": ("other", 0.0, 5000.0, [])}
    for path, (rule, start, end, inputs) in jobs.items():
        f = record_path(meta, path)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"rule": rule, "starttime": start, "endtime": end, "input": inputs}))
    assert record_path(meta, long).parent != meta  # split into a folder
    got = part_jobs(["results/tables/t.md"], meta)
    assert got == {"jobs": 3, "job_s": pytest.approx(50.0 + 300.0 + 300.0), "span_s": pytest.approx(850.0)}
    assert part_jobs(["results/none.md"], meta) is None and part_jobs(["x"], tmp_path / "absent") is None


def test_part_jobs_read_the_records_snakemake_writes(tmp_path, snakemake_bin):
    """The record layout is Snakemake's own (not a public API): a real two-rule run is read back."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "b.txt"\n'
        'rule a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n'
        'rule b:\n    input: "a.txt"\n    output: "b.txt"\n    shell: "cat {input} > {output}"\n')
    r = subprocess.run([snakemake_bin, "-c1", "-d", str(tmp_path), "-s", str(tmp_path / "Snakefile")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got = part_jobs(["b.txt"], tmp_path / ".snakemake/metadata")
    assert got["jobs"] == 2 and 0 <= got["job_s"] <= got["span_s"] + 1e-6


def test_publish_copies_under_a_provenance_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    (src / "t.csv").write_text("a\n1\n")
    Image.new("RGB", (4, 4), (255, 0, 0)).save(src / "p.png")
    line = provenance("abc123", "cafe", "x86_64, 2 CPUs, no GPU", {"jobs": 3, "job_s": 42.4, "span_s": 30.0},
                      "snakemake")
    assert "commit abc123" in line and "3 jobs upstream, 42 s of job wall time" in line
    assert "command `snakemake`" in line and "job times unknown" in provenance("a", "b", "c", None, "d")
    out = tmp_path / "out"
    names = publish({"tables/t.md": src / "t.md", "tables/t.csv": src / "t.csv", "plots/p.png": src / "p.png"},
                    out, line)
    write_index(out, names, line)
    assert (out / "tables/t.md").read_text() == f"> {line}\n\n| a |\n|---|\n| 1 |\n"
    assert pd.read_csv(out / "tables/t.csv", comment="#")["a"].tolist() == [1]
    with Image.open(out / "plots/p.png") as im:
        assert im.text["provenance"] == line and im.getpixel((0, 0)) == (255, 0, 0)
    assert "[t](tables/t.md)" in (out / "README.md").read_text()


def test_commit_is_dirty_for_changed_code_but_not_for_the_published_folder_it_rewrites(tmp_path):
    import subprocess
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "docs/results/part").mkdir(parents=True)
    (tmp_path / "docs/results/part/table.md").write_text("old")
    (tmp_path / "code.py").write_text("x = 1")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    sha = git("rev-parse", "--short=12", "HEAD").stdout.decode().strip()
    (tmp_path / "docs/results/part/table.md").unlink()  # Snakemake removes an output before its job runs
    assert git_commit(tmp_path) == sha + "+dirty"
    assert git_commit(tmp_path, exclude=[tmp_path / "docs/results", tmp_path.parent / "elsewhere"]) == sha
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path, exclude=[tmp_path / "docs/results"]) == sha + "+dirty"


def test_site_index_joins_published_parts_and_lists_the_rest(tmp_path):
    """Parts published by different runs keep their own provenance on the index and the one claims page; a declared
    part not published yet is listed with the command that publishes it."""
    line = provenance("abc123", "cafe", "x86_64, 2 CPUs, no GPU", None, "snakemake docs/results/tsm")
    part = tmp_path / "tsm"
    part.mkdir()
    write_index(part, publish({}, part, line), line)
    write_claims(build_claims(CLAIMS_DECL, METRICS), tmp_path / "c.csv", tmp_path / "c.md")
    (part / "claims.md").write_text(f"> {line}\n\n" + (tmp_path / "c.md").read_text())
    parts = {"tsm": {"tables": ["tsm_table4"], "claims": list(CLAIMS_DECL)},
             "dmp": {"tables": ["dmp_table2"], "claims": ["dmp_vs_full_dit"]}}
    published = write_site(tmp_path, parts, tmp_path / "README.md", tmp_path / "claims.md")
    assert published == ["tsm"]
    index = (tmp_path / "README.md").read_text()
    assert line in index and "[tsm_table4](tsm/tables/tsm_table4.md)" in index
    assert "Not published yet: `snakemake docs/results/dmp`" in index
    claims = (tmp_path / "claims.md").read_text()
    assert claims.count("# Claims of the papers") == 1 and line in claims and "2 claims: 1 holds" in claims
    assert "dmp_vs_full_dit" in claims.split("## dmp")[1] and "Not published yet (1 claims" in claims
