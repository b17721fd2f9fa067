"""TSM assembling: train the routers over a run's frozen core and context experts."""
from tsmflow.models.backbone import load_backbone
from tsmflow.training.assemble import assemble_router
from tsmflow.workflow import setup

setup(snakemake)
i, p = snakemake.input, snakemake.params
print(assemble_router(load_backbone(p.backbone, i), p.spec, list(i.experts), p.router, p.caption_dropout, i.latents,
                      f"{i.data}/labels.jsonl", snakemake.output.router))
