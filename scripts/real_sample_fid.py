"""Real DAG: a run's FID samples, one image per COCO caption of the reference set."""
from tsmflow.realscale import fid_prompts, load_real_backbone
from tsmflow.sampling.folders import caption_folder
from tsmflow.workflow import setup

setup(snakemake)
p = snakemake.params
bb = load_real_backbone(p.spec, p.run, snakemake.input, to_device=True)
caption_folder(bb, fid_prompts(snakemake.input.reference, p.fid["n_samples"]), snakemake.output.images,
               p.fid.get("seed", 0), p.fid["steps"], p.fid["guidance_scale"], batch_size=p.fid["batch_size"])
