"""DMP Fig. 5: the gate's prompt weights over timesteps and blocks, averaged over validation prompts (every class,
for a class-conditional backbone)."""
import numpy as np
import torch

from tsmflow.adapters.dmp import gate_condition, load_dmp
from tsmflow.data.classes import CLASS_ARCHS, CLASSES, class_caption
from tsmflow.data.io import atomic_path, read_labels, read_prompts
from tsmflow.models.backbone import load_backbone
from tsmflow.reporting.plots import prompt_activation
from tsmflow.workflow import setup

N_CAPTIONS = 256  # a paper model's gate averaged over this many captions

setup(snakemake)
i = snakemake.input
bb = load_backbone(snakemake.params.backbone, i)
arch = bb.arch
dmp = load_dmp(bb, i.dmp)
if arch in CLASS_ARCHS:
    prompts = [class_caption(c) for c in CLASSES]
elif "captions" in i.keys():  # a paper model: the first captions of its post-pretraining data
    prompts = [r["caption"] for r in read_labels(f"{i.captions}/labels.jsonl")][:N_CAPTIONS]
else:
    prompts = [p for f in i.prompts for p in read_prompts(f)]
timesteps = np.linspace(0, bb.num_train_timesteps - 1, 50).round().astype(int)
with torch.no_grad():
    hidden, mask = gate_condition(arch, bb.denoiser, bb.encode(prompts))
dmp.to(hidden.device)  # a paper model encodes on the job's device
weights = np.nanmean(np.stack([dmp.activation_map(torch.from_numpy(timesteps), hidden[k:k + 1],
                                                   None if mask is None else mask[k:k + 1])
                               for k in range(len(prompts))]), axis=0)
with atomic_path(snakemake.output.activation) as tmp, open(tmp, "wb") as f:
    np.savez(f, weights=weights, timesteps=timesteps)  # a file object: np.savez would add .npz to a path
prompt_activation(weights, timesteps, snakemake.output.plot,
                  f"DMP prompt activation, {snakemake.wildcards.finetune} ({len(prompts)} prompts)")
