"""Sample grid of a pre-trained base model: the first prompts of each CompBench-mini val file."""
from tsmflow.data.io import read_prompts
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.reporting.plots import sample_grid
from tsmflow.sampling.sample import generate
from tsmflow.workflow import setup

setup(snakemake)
cfg = snakemake.params.sampling
backbone = snakemake.wildcards.backbone
prompts = [p for f in snakemake.input.prompts for p in read_prompts(f)[: cfg["grid_prompts_per_category"]]]
seeds = list(range(cfg["grid_seeds"]))
bb = load_mini_backbone(backbone, snakemake.input.model, snakemake.input.vae, snakemake.input.text_encoder)
images = generate(bb, [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds],
                  steps=cfg["steps"], guidance_scale=cfg["guidance_scale"], solver=cfg["solver"],
                  precision=cfg.get("precision", "fp32"))
sample_grid(images, prompts, len(seeds), snakemake.output.grid,
            title=f"pre-trained {backbone}: {cfg['solver']}, {cfg['steps']} steps, CFG {cfg['guidance_scale']}, seeds 0-{len(seeds) - 1}")
