from tsmflow.training.pretrain import pretrain_denoiser
from tsmflow.workflow import setup

setup(snakemake)
backbone = snakemake.wildcards.backbone
print(pretrain_denoiser(backbone, snakemake.params.cfg, snakemake.input.latents,
                        f"{snakemake.input.data}/labels.jsonl", snakemake.input.vae, snakemake.input.text_encoder,
                        snakemake.output.model))
