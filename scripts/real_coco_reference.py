"""Real DAG: the COCO2014 val reference folder of FID-30K; its first n_samples captions are the prompts."""
from tsmflow.realscale import coco_fid_set
from tsmflow.workflow import setup

setup(snakemake)
print(coco_fid_set(snakemake.params.coco, snakemake.params.fid, snakemake.output.reference))
