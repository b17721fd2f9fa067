"""Real DAG: TSM fostering, one LoRA expert of an expert set (vanilla LoRA when n=1) on its timestep interval."""
from tsmflow.backbone_spec import expert_sets
from tsmflow.realscale import load_real_backbone, train_expert
from tsmflow.workflow import setup

setup(snakemake)
spec, i, wc = snakemake.params.spec, snakemake.input, snakemake.wildcards
print(train_expert(load_real_backbone(spec), spec, expert_sets(spec)[wc.expert_set], int(wc.interval), i.latents,
                   i.labels, snakemake.output.expert))
