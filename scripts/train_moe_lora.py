"""MoE-LoRA baseline: K LoRA experts and a softmax feature router, trained jointly over all timesteps."""
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.training.assemble import train_moe_lora
from tsmflow.workflow import setup

setup(snakemake)
i, p = snakemake.input, snakemake.params
bb = load_mini_backbone(p.spec["backbone"], i.model, i.vae, i.text_encoder)
print(train_moe_lora(bb, p.spec, p.lora, i.latents, f"{i.data}/labels.jsonl", snakemake.output.router))
