"""DeMe: fine-tune the pre-trained denoiser on one timestep range (with out-of-range t and consistency loss)."""
from tsmflow.models.backbone import load_backbone
from tsmflow.training.finetune import train_range_model
from tsmflow.workflow import setup

setup(snakemake)
d, deme, i = snakemake.params.set, snakemake.params.deme, snakemake.input
cfg = {**deme, **d, "train": {**deme["train"], **d.get("train", {})}}
bb = load_backbone(snakemake.params.backbone, i)
print(train_range_model(bb, cfg, d["n"], int(snakemake.wildcards.range), i.latents, f"{i.data}/labels.jsonl",
                        snakemake.output.model, deme["caption_dropout"]))
