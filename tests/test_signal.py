"""The signal ladder's library: prompts, summaries with prompt-clustered standard errors, image statistics."""
import numpy as np
import pandas as pd
import pytest

from tsmflow.data import grammar as G
from tsmflow.evaluation.evaluator import render_scenes
from tsmflow.evaluation.signal import (category_summary, clustered_mean, image_statistics, single_object_prompts,
                                       single_object_summary)


def test_single_object_prompts_cover_every_value_once_per_shape():
    items = single_object_prompts()
    assert len(items) == 4 + (6 + 3 + 2) * 4
    for prompt, attr, value in items:
        spec = G.parse(prompt)
        assert len(spec.objects) == 1 and spec.objects[0][attr] == value
    assert {v for _, a, v in items if a == "color"} == set(G.VALUES["color"])


def test_clustered_standard_error_uses_prompts_as_the_unit():
    df = pd.DataFrame({"prompt": ["a"] * 3 + ["b"] * 3, "score": [10, 10, 10, 30, 30, 30]})
    m = clustered_mean(df, "score")
    # two prompt means 10 and 30: std 14.14, SE 10 (not the per-image SE, ~4.5)
    assert m == {"mean": 20.0, "se": pytest.approx(10.0), "n_images": 6, "n_prompts": 2}
    assert np.isnan(clustered_mean(df[df.prompt == "a"], "score")["se"])


def test_category_summary_combines_categories():
    df = pd.DataFrame({"category": ["color"] * 4 + ["shape"] * 4, "prompt": list("aabbccdd"),
                       "score": [0, 0, 20, 20, 50, 50, 70, 70]})
    s = category_summary(df)
    assert s["color"]["mean"] == 10 and s["shape"]["mean"] == 60
    assert s["mean"]["mean"] == 35 and s["mean"]["se"] == pytest.approx(np.sqrt(2 * 10.0 ** 2) / 2)
    assert s["mean"]["n_images"] == 8


def test_single_object_summary_per_attribute():
    t = pd.DataFrame({"prompt": ["a red circle", "a red circle", "a blue square"], "attr": ["color"] * 3,
                      "value": ["red", "red", "blue"], "n_detections": [1, 2, 1], "correct": [1.0, 0.0, 1.0],
                      "shape_correct": [1.0, 1.0, 0.0]})
    s = single_object_summary(t)["color"]
    assert s["mean"] == pytest.approx(2 / 3) and s["one_object"] == pytest.approx(2 / 3) and s["n_prompts"] == 2


def test_image_statistics_tell_sharp_from_blurred():
    imgs, _ = render_scenes(8, 0, 32)
    sharp = image_statistics(imgs)
    flat = image_statistics(np.full_like(imgs, 128))
    assert sharp["n_images"] == 8 and sharp["gradient_mean"] > 0.01 and sharp["highpass_std_mean"] > 0.01
    assert flat["gradient_mean"] == 0 and flat["highpass_std_mean"] == 0
