"""docs/results/<part>/: one part's tables, claims and table plots, each under one provenance line, and an index."""
from pathlib import Path

from tsmflow.data.io import atomic_dir
from tsmflow.reporting.publish import git_commit, machine, part_jobs, provenance, publish, write_index
from tsmflow.workflow import setup

setup(snakemake)
p = snakemake.params
jobs = part_jobs(list(snakemake.input), p.metadata)
# the published folders are this rule's outputs, not the code that made them
line = provenance(git_commit(p.repo, exclude=[Path(snakemake.output[0]).parent]), p.config_hash, machine(), jobs,
                  p.command)
with atomic_dir(snakemake.output[0]) as tmp:
    names = publish(dict(snakemake.input.items()), tmp, line)
    write_index(tmp, names, line)
print(line, f"{len(names)} files", sep="\n")
