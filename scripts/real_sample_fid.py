"""Real DAG: a run's FID samples, one image per COCO caption of the reference set."""
from tsmflow.realscale import fid_prompts, load_real_backbone, run_fingerprint
from tsmflow.sampling.folders import caption_folder
from tsmflow.workflow import setup

setup(snakemake)
p = snakemake.params
bb = load_real_backbone(p.spec, p.run, snakemake.input, to_device=True)
router = getattr(snakemake.input, "router", None)
trained = list(getattr(snakemake.input, "experts", [])) + ([router] if router else [])
# FID-30K takes hours: a killed job's rerun keeps the batches this same model finished
caption_folder(bb, fid_prompts(snakemake.input.reference, p.fid["n_samples"]), snakemake.output.images,
               p.fid.get("seed", 0), p.fid["steps"], p.fid["guidance_scale"], batch_size=p.fid["batch_size"],
               resume_key=run_fingerprint(p.spec, p.run, trained))
