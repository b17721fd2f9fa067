"""DeMe: search the merge weights of the range models' task vectors on small-sample FID; save the merged model."""
from tsmflow.data.io import read_labels
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.scoring import check_validated
from tsmflow.merging.fid_search import merge_search
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.workflow import setup

setup(snakemake)
i, p = snakemake.input, snakemake.params
space = p.feature_space
if space not in ("shapes", "patch"):
    raise ValueError(f"evaluation.fid.feature_space={space!r}: the merge search scores candidates with the "
                     "evaluator's features (shapes or patch)")
check_validated(i.validation, p.require_validated)
bb = load_mini_backbone(p.arch, i.model, i.vae, i.text_encoder)
captions = [r["caption"] for r in read_labels(f"{i.reference}/labels.jsonl")]
print(merge_search(bb, i.ranges, p.search, p.guidance_scale, captions, p.n_final, load_evaluator(i.evaluator),
                   i.reference_stats, snakemake.output.model, feature_space=space, precision=p.precision))
