"""DeMe: search the merge weights of the range models' task vectors on small-sample FID; save the merged model."""
from tsmflow.data.io import read_labels
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.scoring import check_validated
from tsmflow.merging.fid_search import merge_search
from tsmflow.models.backbone import device, load_backbone
from tsmflow.workflow import setup

setup(snakemake)
i, p = snakemake.input, snakemake.params
space = p.fid["feature_space"]
detector = None  # Inception features (a paper model's FID) need no evaluator
if space in ("shapes", "patch"):
    check_validated(i.validation, p.require_validated)
    detector = load_evaluator(i.evaluator)
bb = load_backbone(p.backbone, i)
if p.backbone["family"] != "mini":  # a paper model samples on the job's GPU (the miniature's jobs: CPU threads)
    bb.to(device())
captions = [r["caption"] for r in read_labels(f"{i.reference}/labels.jsonl")]
print(merge_search(bb, i.ranges, p.search, p.sampling["guidance_scale"], captions, p.fid["n_samples"], detector,
                   i.reference_stats, snakemake.output.model, feature_space=space, precision=p.sampling["precision"],
                   batch_size=p.fid.get("batch_size", 64), inception_weights=p.fid.get("inception_weights")))
