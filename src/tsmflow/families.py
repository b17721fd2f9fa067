"""The papers' backbone families (config `backbones.<name>.family`), without importing torch: the Snakefile reads it.

family -> (diffusers pipeline class, denoiser arch, denoiser attribute on the pipeline). A backbone with a
`family` is a real model loaded from its pipeline; one without is the miniature's, trained by the workflow.
"""
FAMILIES = {
    "sd15": ("StableDiffusionPipeline", "unet", "unet"),
    "sd2": ("StableDiffusionPipeline", "unet", "unet"),
    "pixart_alpha": ("PixArtAlphaPipeline", "dit", "transformer"),
    "sd3": ("StableDiffusion3Pipeline", "mmdit", "transformer"),
}
# what loading a pipeline reads of its backbone entry: other keys changing must not rerun sampling or encoding
LOAD_KEYS = ("family", "pretrained", "revision", "variant", "dtype", "local_files_only", "resolution")


def backbone_spec(config: dict, backbone: str) -> dict:
    """What loading a backbone reads of the config (a rule's `backbone` param): a real family's pipeline keys, or
    the miniature's arch (whose weights are the job's inputs)."""
    b = config["backbones"][backbone]
    return {k: b[k] for k in LOAD_KEYS if k in b} if "family" in b else {"family": "mini", "arch": backbone}
