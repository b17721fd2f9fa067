"""FID samples of a run: one image per held-out reference caption."""
from tsmflow.data.io import read_labels
from tsmflow.runs import load_run_backbone
from tsmflow.sampling.folders import caption_folder
from tsmflow.workflow import setup

setup(snakemake)
cfg, ev = snakemake.params.sampling, snakemake.params.evaluation
captions = [r["caption"] for r in read_labels(f"{snakemake.input.reference}/labels.jsonl")]
n = ev["fid"]["n_samples"]
if n > len(captions):
    raise ValueError(f"evaluation.fid.n_samples={n} exceeds the {len(captions)} reference captions")
bb = load_run_backbone(snakemake.params.run, snakemake.input)
caption_folder(bb, captions[:n], snakemake.output.images, ev["seed"], cfg["steps"], cfg["guidance_scale"],
               solver=cfg["solver"])
