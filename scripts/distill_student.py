"""One distilled student: the teacher (the backbone's pre-trained denoiser) into a few-step student (DMD / VSD)."""
from tsmflow.data.io import read_labels
from tsmflow.models.backbone import load_backbone
from tsmflow.training.distill import student_config, distill_student
from tsmflow.training.pretrain import load_latents
from tsmflow.workflow import setup

setup(snakemake)
s, i = snakemake.params.student, snakemake.input
bb = load_backbone(snakemake.params.backbone, i)
cfg = student_config(snakemake.params.distill, s)
real = None
if cfg["gan"]:  # DMD2's GAN phase: real latents, each with its own caption
    real, captions = load_latents(i.latents, f"{i.data}/labels.jsonl")
else:
    captions = [r["caption"] for r in read_labels(f"{i.data}/labels.jsonl")]
if s["adapter"] == "tsm2":  # the students it routes over
    cfg["assemble"] = {"core": i.core, "context": list(i.context), "router_input": s.get("router_input", "both")}
print(distill_student(bb, cfg, captions, snakemake.output.model, real))
