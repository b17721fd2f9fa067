"""The signal ladder's library: prompts, summaries with prompt-clustered standard errors, image statistics."""
import numpy as np
import pandas as pd
import pytest

from tsmflow.data import grammar as G
from tsmflow.evaluation.evaluator import render_scenes
from tsmflow.evaluation.signal import (binding_outcomes, category_summary, clustered_mean, count_summary,
                                       image_statistics, rare_split, single_object_prompts, single_object_summary,
                                       text_binding_probe)


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


def _det(shape, color, objectness=0.9):
    one_hot = lambda vals, v: {x: float(x == v) for x in vals}  # noqa: E731
    return {"objectness": objectness, "cx": 8.0, "cy": 8.0, "shape": one_hot(G.VALUES["shape"], shape),
            "color": one_hot(G.VALUES["color"], color), "texture": one_hot(G.VALUES["texture"], "plain"),
            "size": one_hot(G.VALUES["size"], "small")}


def test_binding_outcomes_tell_leakage_from_missing_and_other():
    spec = G.parse("a blue circle and a yellow triangle")
    rows = binding_outcomes(spec, [_det("circle", "yellow"), _det("triangle", "yellow")])
    assert [(r["phrase"], r["outcome"]) for r in rows] == [(0, "swapped"), (1, "bound")]
    rows = binding_outcomes(spec, [_det("circle", "red")])
    assert [r["outcome"] for r in rows] == ["other", "missing"]
    # the most confident detection of the noun decides
    rows = binding_outcomes(spec, [_det("circle", "red", 0.6), _det("circle", "blue", 0.95)])
    assert rows[0]["outcome"] == "bound" and all(r["contested"] for r in rows)
    # a value both phrases state cannot leak
    assert not binding_outcomes(G.parse("a red circle and a red square"), [])[0]["contested"]


def test_count_summary_tells_a_dropped_or_copied_noun_from_a_complete_image():
    two, three = "a blue circle and a yellow triangle", "a red circle , a blue square and a green diamond"
    images = [
        [_det("circle", "blue"), _det("triangle", "yellow")],   # complete
        [_det("circle", "blue")],                               # the triangle dropped
        [_det("circle", "blue"), _det("circle", "yellow")],     # the triangle drawn as a second circle
        [_det("square", "red"), _det("diamond", "red")],        # two of three nouns, one object short
        [],                                                     # nothing
    ]
    out = count_summary(images, [two, two, two, three, three], ["color"] * 3 + ["shape"] * 2)
    assert out["color"] == {"n_images": 3, "one_noun": pytest.approx(2 / 3), "fewer": pytest.approx(1 / 3),
                            "as_many": pytest.approx(2 / 3), "more": 0.0}
    assert out["shape"]["one_noun"] == 0.0 and out["shape"]["fewer"] == 1.0
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        count_summary(images[:2], [two], ["color"])


def test_rare_split_separates_prompts_that_ask_for_a_rare_composition():
    rare_pairs = G.parse_rare_pairs(["yellow diamond"])
    scores = pd.DataFrame({"category": ["color"] * 4, "score": [80.0, 60.0, 0.0, 10.0],
                           "prompt": ["a red circle and a blue square"] * 2
                           + ["a yellow diamond and a blue square", "a blue square and a yellow diamond"]})
    out = rare_split(scores, rare_pairs)
    assert out["common"]["color"]["mean"] == 70.0 and out["common"]["color"]["n_prompts"] == 1
    assert out["rare"]["color"]["mean"] == 5.0 and out["rare"]["color"]["n_prompts"] == 2


def test_text_binding_probe_on_a_symmetric_encoder():
    import torch
    from types import SimpleNamespace
    from tsmflow.models.text import build_tokenizer

    tok = build_tokenizer(G.vocabulary(), 24)

    class BagOfWords(torch.nn.Module):
        """every position holds the sum of all word embeddings: no binding at all"""
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(tok), 16)

        def forward(self, input_ids, attention_mask):
            bag = (self.emb(input_ids) * attention_mask[..., None]).sum(1, keepdim=True)
            h = bag.expand(-1, input_ids.shape[1], -1)
            return SimpleNamespace(last_hidden_state=h, text_embeds=bag[:, 0])

    torch.manual_seed(0)
    p = text_binding_probe(tok, BagOfWords())
    assert p["n_prompts"] == 4 * 3 * 6 * 5 and p["swap_cosine"] == pytest.approx(1.0)
    assert p["second_noun_accuracy"] <= 0.6  # it can only guess which of the two colours is its own

    class Bigram(BagOfWords):
        """each position holds its word and the one before: the noun carries its own colour"""
        def forward(self, input_ids, attention_mask):
            e = self.emb(input_ids)
            h = e + torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], dim=1)
            return SimpleNamespace(last_hidden_state=h, text_embeds=h.sum(1))

    p = text_binding_probe(tok, Bigram())
    assert p["second_noun_accuracy"] > 0.95 and p["first_noun_accuracy"] > 0.95
