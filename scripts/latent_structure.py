"""DMP Table 5: structural statistics of a run's final latents, and for a DMP run its gate's spatial and
temporal biases (DMP Fig. 7, from the activation data its plot rule saved)."""
import numpy as np

from tsmflow.data.io import read_labels, write_json
from tsmflow.evaluation.structure import activation_bias, offdiag_stats
from tsmflow.runs import load_run_backbone
from tsmflow.sampling.sample import generate
from tsmflow.workflow import setup

setup(snakemake)
inp, p = snakemake.input, snakemake.params
captions = [r["caption"] for r in read_labels(f"{inp.reference}/labels.jsonl")]
if p.n_latents > len(captions):
    raise ValueError(f"{inp.reference}: {p.n_latents} latents asked, only {len(captions)} reference captions")
captions = captions[: p.n_latents]
bb = load_run_backbone(p.run, inp)
kw = {k: p.sampling[k] for k in ("steps", "guidance_scale", "solver", "timesteps") if k in p.sampling}
# the FID samples' captions and seeds (caption_folder: seed + index): these are the latents of those images
latents = generate(bb, captions, [p.seed + k for k in range(len(captions))], latents=True, progress=False, **kw)
stats = {"run": snakemake.wildcards.run, **offdiag_stats(latents)}
if "activation" in inp.keys():
    with np.load(inp.activation) as z:
        stats.update(activation_bias(z["weights"]))
write_json(snakemake.output.stats, stats)
print(stats)
