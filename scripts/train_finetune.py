"""Further training of a pre-trained denoiser (full fine-tuning; prompt tuning / DMP, denoiser frozen), or
training one from scratch, with or without DMP (DMP Table 6)."""
from tsmflow.models.backbone import load_backbone
from tsmflow.training.finetune import full_finetune, train_dmp, train_scratch
from tsmflow.workflow import setup

setup(snakemake)
f, defaults, i, p = snakemake.params.finetune, snakemake.params.defaults, snakemake.input, snakemake.params
method = f["method"]
cfg = {**defaults[method], **f, "train": {**defaults[method]["train"], **f.get("train", {})}}
bb = load_backbone(p.backbone, i)  # from scratch: no pre-trained denoiser among the inputs
if method == "scratch":  # a fresh denoiser of the backbone's architecture
    print(train_scratch(bb, cfg, p.arch, i.latents, f"{i.data}/labels.jsonl", snakemake.output.model,
                        defaults["caption_dropout"]))
else:
    train = {"full": full_finetune, "dmp": train_dmp}[method]
    print(train(bb, cfg, i.latents, f"{i.data}/labels.jsonl", snakemake.output.model, defaults["caption_dropout"]))
