"""Further training of a pre-trained denoiser (full fine-tuning; prompt tuning / DMP, denoiser frozen), or
training one from scratch, with or without DMP (DMP Table 6)."""
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.training.finetune import full_finetune, train_dmp, train_scratch
from tsmflow.workflow import setup

setup(snakemake)
f, defaults, i = snakemake.params.finetune, snakemake.params.defaults, snakemake.input
text = getattr(i, "text_encoder", None)  # none for a class-conditional backbone
method = f["method"]
cfg = {**defaults[method], **f, "train": {**defaults[method]["train"], **f.get("train", {})}}
if method == "scratch":  # no pre-trained denoiser: a fresh one of the backbone's architecture
    bb = load_mini_backbone(f["backbone"], None, i.vae, text)
    print(train_scratch(bb, cfg, snakemake.params.backbone, i.latents, f"{i.data}/labels.jsonl",
                        snakemake.output.model, defaults["caption_dropout"]))
else:
    bb = load_mini_backbone(f["backbone"], i.model, i.vae, text)
    train = {"full": full_finetune, "dmp": train_dmp}[method]
    print(train(bb, cfg, i.latents, f"{i.data}/labels.jsonl", snakemake.output.model, defaults["caption_dropout"]))
