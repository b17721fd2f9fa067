"""Record a 2-stage run's router gates while it samples validation prompts; plot them against t."""
import pandas as pd

from tsmflow.adapters.router import ExpertMixture
from tsmflow.data.io import atomic_path, read_prompts
from tsmflow.reporting.plots import gates_vs_t
from tsmflow.runs import load_run_backbone
from tsmflow.sampling.sample import generate
from tsmflow.workflow import setup

setup(snakemake)
spec, s = snakemake.params.run, snakemake.params.sampling
bb = load_run_backbone(spec, snakemake.input)
mixture = next(r for r in bb.routers if isinstance(r, ExpertMixture))
prompts = [p for f in snakemake.input.prompts for p in read_prompts(f)[:2]]
mixture.recorded = []
generate(bb, prompts, list(range(len(prompts))), steps=s["steps"], guidance_scale=s["guidance_scale"],
         solver=s["solver"], precision=s["precision"])
df = pd.DataFrame(mixture.recorded)
with atomic_path(snakemake.output.gates) as tmp:
    df.to_csv(tmp, index=False)
gates_vs_t(df, list(spec["context"]), snakemake.output.plot,
           title=f"{snakemake.wildcards.run}: router gates while sampling {len(prompts)} val prompts")
