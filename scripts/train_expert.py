"""TSM fostering: train one LoRA expert of an expert set on its timestep interval."""
from tsmflow.expert_sets import ExpertSet
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.training.experts import train_expert
from tsmflow.workflow import setup

setup(snakemake)
es = ExpertSet.parse(snakemake.wildcards.expert_set)
i = snakemake.input
bb = load_mini_backbone(es.backbone, i.model, i.vae, i.text_encoder)
print(train_expert(bb, es, int(snakemake.wildcards.interval), snakemake.params.lora, i.latents,
                   f"{i.data}/labels.jsonl", snakemake.output.expert))
