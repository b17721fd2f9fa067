"""docs/results/README.md and claims.md: the published parts on disk, each under its own provenance line."""
from tsmflow.reporting.publish import write_site
from tsmflow.workflow import setup

setup(snakemake)
published = write_site(snakemake.params.docs, snakemake.params.parts, snakemake.output.index, snakemake.output.claims)
print(f"{len(published)} of {len(snakemake.params.parts)} parts published: {', '.join(published) or 'none'}")
