"""The COCO2014 val reference folder of a paper model's FID; its first n_samples captions are the prompts."""
from tsmflow.data.image_text import coco_fid_set
from tsmflow.workflow import setup

setup(snakemake)
print(coco_fid_set(snakemake.params.coco, snakemake.params.n_samples, snakemake.output.reference))
