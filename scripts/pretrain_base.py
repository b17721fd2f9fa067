from tsmflow.training.pretrain import pretrain_denoiser
from tsmflow.workflow import setup

setup(snakemake)
backbone = snakemake.wildcards.backbone
print(pretrain_denoiser(backbone, snakemake.params.cfg, snakemake.input.latents,
                        f"{snakemake.input.data}/labels.jsonl", snakemake.input.vae,
                        getattr(snakemake.input, "text_encoder", None),
                        snakemake.output.model))
