from tsmflow.reporting.summary import foundation_summary
from tsmflow.data.io import write_lines
from tsmflow.workflow import setup

setup(snakemake)
text = foundation_summary(snakemake.input.text_encoder, snakemake.input.vae, snakemake.input.vae_metrics,
                          snakemake.input.base, snakemake.params.benchmarks)
write_lines(snakemake.output[0], text.splitlines())
