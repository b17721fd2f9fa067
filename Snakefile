# Timestep-specialised fine-tuning of diffusion models: TSM, DeMe, DMP, LoRaD and baselines.
# Default: the embedded miniature world (config/config.yaml). See README.md.
import os

# config/config.yaml is the default. A --configfile (config/smoke.yaml) replaces it instead of being merged into it:
# each is a complete config. One that says `extends: <file>` (config/backbones/*.yaml: a paper model as the
# backbone) is that file's config with its own top-level keys in place. --config key=value still overrides.
if not workflow.config_settings.configfiles:

    configfile: os.path.join(workflow.basedir, "config/config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/text_encoder.smk"
include: "rules/vae.smk"
include: "rules/pretrain.smk"
include: "rules/summary.smk"
include: "rules/tsm.smk"
include: "rules/deme.smk"
include: "rules/dmp.smk"
include: "rules/distill.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


check_thread_rules()


from tsmflow.workflow import LAUNCH  # noqa: E402

# jobs (local, or the snakemake a cluster job runs, which parses this file again) inherit it
os.environ[LAUNCH] = "1" if config.get("accelerate_launch") else ""


report: "report/workflow.rst"


rule all:
    input:
        get_final_outputs(),
    default_target: True


onsuccess:
    # Once results/ is under DVC (results.dvc exists; see README "DVC"), every run keeps it in step,
    # so `dvc status` is clean after a run; `python -m tsmflow.dvc_sync push` sends it to the remote.
    if os.path.exists("results.dvc"):
        from tsmflow.dvc_sync import track

        track(".")
