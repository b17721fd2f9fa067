# Timestep-specialised fine-tuning of diffusion models: TSM, DeMe, DMP, LoRaD and baselines.
# Default: the embedded miniature world (config/config.yaml). See README.md.

configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/text_encoder.smk"
include: "rules/vae.smk"
include: "rules/pretrain.smk"
include: "rules/summary.smk"
include: "rules/tsm.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


report: "report/workflow.rst"


rule all:
    input:
        get_final_outputs(),
    default_target: True
