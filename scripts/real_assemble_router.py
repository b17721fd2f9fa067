"""Real DAG: TSM assembling, the routers over a run's frozen core and context experts."""
from tsmflow.backbone_spec import router_config
from tsmflow.realscale import load_real_backbone
from tsmflow.training.assemble import assemble_router
from tsmflow.workflow import setup

setup(snakemake)
spec, run, i = snakemake.params.spec, snakemake.params.run, snakemake.input
print(assemble_router(load_real_backbone(spec), run, list(i.experts), router_config(spec),
                      spec.get("caption_dropout", 0.1), i.latents, i.labels, snakemake.output.router))
