"""Renderer determinism and label correctness; caption grammar; CompBench-mini prompt files."""
import numpy as np
import pytest

from tsmflow.data import grammar as G
from tsmflow.data.world import BACKGROUND, COLORS, Obj, Scene, overlaps, render, spatial_relation

RARE = G.parse_rare_pairs(["magenta triangle", "striped diamond", "large circle"])
WS = dict(n_objects_p=[0.3, 0.4, 0.3], rare_pairs=RARE, rare_keep=0.1,
          mention={"size": 0.5, "color": 0.8, "texture": 0.5}, p_relation=0.5)


def scenes(n, seed=0, res=32):
    return [G.pretrain_scene(np.random.default_rng([seed, i]), res, **WS) for i in range(n)]


def test_render_is_deterministic_per_seed():
    a = [render(s) for s in scenes(20, seed=7)]
    b = [render(s) for s in scenes(20, seed=7)]
    c = [render(s) for s in scenes(20, seed=8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert a[0].dtype == np.uint8 and a[0].shape == (32, 32, 3)


@pytest.mark.parametrize("res", [32, 48])
def test_labels_match_pixels(res):
    """Each labelled object shows its colour at its centre region; objects never overlap."""
    for s in scenes(60, seed=1, res=res):
        img = render(s).astype(int)
        assert 1 <= len(s.objects) <= 3
        for i, o in enumerate(s.objects):
            for q in s.objects[i + 1:]:
                assert not overlaps(o, q)
            x0, y0, x1, y1 = o.bbox()
            assert 0 <= x0 and 0 <= y0 and x1 <= res and y1 <= res
            # the pixel nearest the centre has the object's hue (full or darkened by its texture)
            px = img[int(o.cy), int(o.cx)]
            col = np.array(COLORS[o.color])
            assert min(np.abs(px - col).max(), np.abs(px - col * 0.35).max()) < 40, (o, px)
        # far corners are background unless an object covers them
        covered = any(ob.bbox()[0] < 1 and ob.bbox()[1] < 1 for ob in s.objects)
        if not covered:
            assert np.abs(img[0, 0] - np.array(BACKGROUND)).max() < 5


def test_texture_is_visible():
    base = dict(shape="square", color="red", size="large", cx=16.0, cy=16.0, diameter=16.0)
    plain = render(Scene([Obj(texture="plain", **base)], 32)).astype(int)
    striped = render(Scene([Obj(texture="striped", **base)], 32)).astype(int)
    checkered = render(Scene([Obj(texture="checkered", **base)], 32)).astype(int)
    inner = (slice(12, 20), slice(12, 20))
    assert plain[inner][:, :, 0].std() < 1
    # stripes vary down rows only; checks vary along both axes
    assert striped[inner][:, :, 0].std(axis=0).max() > 40 and striped[inner][:, :, 0].std(axis=1).max() < 1
    assert checkered[inner][:, :, 0].std(axis=1).max() > 40


def test_spatial_relation_dominant_axis():
    a, b = Obj("circle", "red", "plain", "small", 5, 16, 8), Obj("square", "red", "plain", "small", 25, 14, 8)
    assert spatial_relation(a, b) == "left" and spatial_relation(b, a) == "right"
    c = Obj("circle", "red", "plain", "small", 16, 4, 8)
    assert spatial_relation(c, Obj("square", "red", "plain", "small", 15, 25, 8)) == "above"


def test_captions_parse_back_and_match_scene():
    for s in scenes(200, seed=2):
        spec = G.parse(s.caption)
        assert spec.text() == s.caption
        assert [o["shape"] for o in spec.objects] == [o.shape for o in s.objects]
        for want, o in zip(spec.objects, s.objects):
            for attr, v in want.items():
                assert getattr(o, attr) == v
        if spec.relation and spec.relation[2] in G.SPATIAL:
            assert spatial_relation(s.objects[0], s.objects[1]) == spec.relation[2]


def test_rare_pairs_are_rare_in_pretraining():
    objs = [o for s in scenes(1500, seed=3) for o in s.objects]
    rate = np.mean([(o.color, o.shape) == ("magenta", "triangle") for o in objs])
    common = np.mean([(o.color, o.shape) == ("red", "triangle") for o in objs])
    assert rate < common / 3, (rate, common)


def test_parse_rejects_bad_prompts():
    for bad in ["", "a red", "a red circle frobs a square", "a red blue circle"]:
        with pytest.raises(ValueError):
            G.parse(bad)


@pytest.mark.parametrize("category", G.CATEGORIES)
def test_compbench_split(category):
    train, val = G.compbench_split(category, 30, 12, seed=0, rare_pairs=RARE, p_rare=0.5)
    assert len(train) == 30 and len(val) == 12 and not set(train) & set(val)
    assert (train, val) == G.compbench_split(category, 30, 12, seed=0, rare_pairs=RARE, p_rare=0.5)
    for p in train + val:
        spec = G.parse(p)
        for o in spec.objects:
            assert set(o) == set(G.CATEGORY_ATTRS[category])
        if category in ("spatial", "non_spatial"):
            assert spec.relation is not None
        # every prompt can be rendered as asked
        scene = G.scene_for_spec(spec, np.random.default_rng(0), 32)
        if spec.relation and spec.relation[2] in G.SPATIAL:
            assert spatial_relation(scene.objects[0], scene.objects[1]) == spec.relation[2]
        if spec.relation and spec.relation[2] == "bigger":
            assert scene.objects[0].diameter > scene.objects[1].diameter


@pytest.mark.parametrize("category", G.CATEGORIES)
def test_more_training_prompts_keep_the_validation_prompts(category):
    small_train, val = G.compbench_split(category, 10, 12, seed=0, rare_pairs=RARE, p_rare=0.5)
    big_train, same_val = G.compbench_split(category, 40, 12, seed=0, rare_pairs=RARE, p_rare=0.5)
    assert same_val == val and big_train[:10] == small_train


def test_compbench_split_too_many_prompts_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct prompts"):
        G.compbench_split("texture", 400, 400, seed=0, rare_pairs=RARE, p_rare=0.5)


def test_captions_that_leave_objects_unnamed_keep_the_scenes_and_name_what_they_state():
    partial = {**WS, "mention": {**WS["mention"], "object": 0.3}}
    full = scenes(300, seed=4)
    some = [G.pretrain_scene(np.random.default_rng([4, i]), 32, **partial) for i in range(300)]
    named, total = 0, 0
    for f, s in zip(full, some):
        assert f.objects == s.objects  # the caption is drawn last: same pixels
        spec = G.parse(s.caption)
        assert spec.objects[0]["shape"] == s.objects[0].shape  # the first object is always named
        shapes = [o.shape for o in s.objects]
        assert all(o["shape"] in shapes for o in spec.objects)
        if len(spec.objects) < len(s.objects):
            assert spec.relation is None  # a relation needs both of its objects named
        named, total = named + len(spec.objects) - 1, total + len(s.objects) - 1
    assert 0.2 < named / total < 0.4, named / total
    # object: 1 is the default: every object named, and no extra draw that would change the captions
    named_all = {**WS, "mention": {**WS["mention"], "object": 1.0}}
    assert [s.caption for s in full] == [G.pretrain_scene(np.random.default_rng([4, i]), 32, **named_all).caption
                                         for i in range(300)]
    assert all(len(G.parse(s.caption).objects) == len(s.objects) for s in full)
