"""TSM assembling: train the routers over a run's frozen core and context experts."""
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.training.assemble import assemble_router
from tsmflow.workflow import setup

setup(snakemake)
i, p = snakemake.input, snakemake.params
bb = load_mini_backbone(p.spec["backbone"], i.model, i.vae, i.text_encoder)
print(assemble_router(bb, p.spec, list(i.experts), p.router, p.caption_dropout, i.latents,
                      f"{i.data}/labels.jsonl", snakemake.output.router))
