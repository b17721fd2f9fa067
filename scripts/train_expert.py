"""TSM fostering: train one LoRA expert of an expert set on its timestep interval (vanilla LoRA when n=1)."""
from tsmflow.expert_sets import ExpertSet
from tsmflow.models.backbone import load_backbone
from tsmflow.training.experts import train_expert
from tsmflow.workflow import setup

setup(snakemake)
es, i, p = ExpertSet.parse(snakemake.wildcards.expert_set), snakemake.input, snakemake.params
print(train_expert(load_backbone(p.backbone, i), es, int(snakemake.wildcards.interval), p.lora, i.latents,
                   f"{i.data}/labels.jsonl", snakemake.output.expert))
