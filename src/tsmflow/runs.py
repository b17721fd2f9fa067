"""What a run is made of: load the model a run samples from, given its method and its inputs."""
from __future__ import annotations

from .models.backbone import Backbone, load_mini_backbone


def load_run_backbone(spec: dict, inputs) -> Backbone:
    """`spec` is the run's config block; `inputs` the rule's named inputs (model, vae, text_encoder, ...)."""
    if spec["method"] == "base":
        return load_mini_backbone(spec["backbone"], inputs.model, inputs.vae, inputs.text_encoder)
    raise ValueError(f"unknown run method {spec['method']!r}")
