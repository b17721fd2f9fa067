"""T2I-CompBench's scorers at real scale: their arithmetic on stubbed model outputs against hand-computed values,
and each model class as a tiny random model saved locally and loaded by the scorer (nothing is downloaded)."""
import math

import numpy as np
import pytest
import torch

from tsmflow.evaluation.t2i_compbench import (ComplexKinds, RuleParser, T2ICompBenchScorer, load_scorer,
                                              position_score, relation_of, spatial_score, three_in_one,
                                              yes_probability)
from test_backbones import clip_tokenizer, save_tiny_clip

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "yes", "no", "?", "a", "the", "red", "blue",
         "green", "round", "book", "mug", "bench", "bowl", "horse", "car", "and"]


def save_tiny_blip_vqa(path):
    from transformers import (BertTokenizerFast, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor,
                              BlipProcessor)
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    torch.manual_seed(0)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
            "num_attention_heads": 2, "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id,
            "sep_token_id": tok.sep_token_id, "encoder_hidden_size": 32}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision)).save_pretrained(path)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(path)
    return path


def save_tiny_owlv2(path):
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor
    tok = clip_tokenizer(path / "tokenizer")
    torch.manual_seed(0)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(path)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                   tokenizer=tok).save_pretrained(path)
    return path


def save_tiny_scorers(root) -> dict:
    """Config evaluation.t2i_compbench pointing at tiny random models under `root`."""
    return {"blip_vqa": str(save_tiny_blip_vqa(root / "blip")), "clip": str(save_tiny_clip(root / "clip")),
            "detector": str(save_tiny_owlv2(root / "owl")), "detector_threshold": 0.0, "parser": "rule",
            "local_files_only": True, "np_num": 8, "batch_size": 4}


def test_rule_parser_reads_template_prompts():
    p = RuleParser()
    assert p.noun_phrases("a green bench and a blue bowl") == ["a green bench", "a blue bowl"]
    assert p.noun_phrases("A horse on the right of a car.") == ["a horse", "a car"]
    assert p.objects("a horse on the right of a car") == ("horse", "car")
    assert p.objects("The red book is on the left of the white mug") == ("book", "mug")
    assert p.objects("a green bench and a blue bowl") == (None, None)
    assert p.noun_phrases("The red book is on the left of the white mug") == ["the red book", "the white mug"]
    assert p.noun_phrases("a man is holding a phone") == ["a man", "a phone"]
    assert p.without_adjectives("the red book is on the left of the white mug") == "the book is on the left of the mug"
    assert relation_of("a cat on top of a box") == "on top of" and relation_of("a cat near a box") == "near"


def test_scoring_arithmetic_by_hand():
    assert yes_probability(torch.tensor(2.0), torch.tensor(0.0)).item() == pytest.approx(math.e ** 2 / (math.e ** 2 + 1))
    a, right_of_a = [0, 0, 100, 100], [300, 0, 400, 100]  # centres 250 px apart, side by side
    assert position_score("on the left of", a, right_of_a) == 1.0  # box2's centre is right of box1's: dx > 0
    assert position_score("on the right of", a, right_of_a) == 0.0
    overlapping = [50, 0, 150, 100]  # iou = 50*100 / (2*10000 - 5000) = 1/3
    assert position_score("on the left of", a, overlapping) == pytest.approx(0.1 / (1 / 3))
    assert position_score("next to", a, [300, 200, 400, 300]) == pytest.approx(150 / 300)  # neither axis < 150
    assert position_score("next to", a, [300, 300, 400, 400]) == pytest.approx(150 / 300)
    assert position_score("on top of", a, [0, 300, 100, 400]) == 1.0  # their "on the top of": box2 below
    assert spatial_score("on the left of", (0.6, a), (0.4, right_of_a)) == pytest.approx(0.15 + 0.1 + 0.5)
    assert spatial_score("on the right of", (0.6, a), (0.4, right_of_a)) == 0.0  # 0.25 is below the 0.5 cut
    assert spatial_score("on the left of", (0.9, a), None) == 0.0 and spatial_score(None, (1, a), (1, a)) == 0.0
    assert three_in_one("spatial", 0.4, 0.8, 0.1) == pytest.approx(0.6)
    assert three_in_one("action", 0.4, 0.8, 0.1) == pytest.approx(0.25)
    assert three_in_one("spatialaction", 0.4, 0.8, 0.3) == pytest.approx(0.5)


def test_next_to_uses_either_axis():
    a = [0, 0, 100, 100]
    assert position_score("next to", a, [300, 100, 400, 200]) == 1.0  # |dy| = 100 < 150
    assert position_score("near", a, [300, 300, 400, 400]) == pytest.approx(0.5)


class StubBlip:
    def __init__(self, answers):
        self.answers, self.asked = answers, []

    def yes(self, images, questions):
        self.asked += questions
        return np.array([self.answers[q] for q in questions])


class StubClip:
    def scores(self, images, texts, batch_size):
        return np.array([{"a man is holding a phone": 0.31, "the book is on the left of the mug": 0.2}[t]
                         for t in texts])


class StubDetector:
    def __init__(self, found):
        self.found = found

    def best(self, image, queries):
        return [self.found.get(q) for q in queries]


def stub_scorer(kinds=None):
    blip = StubBlip({"a green bench?": 0.9, "a blue bowl?": 0.5, "the red book?": 0.8, "the white mug?": 0.6})
    det = StubDetector({"book": (0.6, [0, 0, 100, 100]), "mug": (0.4, [300, 0, 400, 100])})
    scorer = T2ICompBenchScorer({"np_num": 8}, blip=blip, clip=StubClip(), detector=det, parser=RuleParser())
    if kinds:
        scorer.kinds = kinds
    return scorer, blip


def test_scorer_combines_stubbed_model_outputs_as_t2i_compbench():
    scorer, blip = stub_scorer()
    img = np.zeros((2, 8, 8, 3), np.uint8)
    assert scorer.score_images(img[:1], ["a green bench and a blue bowl"], "color") == [pytest.approx(0.45)]
    assert blip.asked == ["a green bench?", "a blue bowl?"]
    assert scorer.score_images(img[:1], ["a man is holding a phone"], "non_spatial") == [pytest.approx(0.31)]
    prompt = "the red book is on the left of the white mug"
    assert scorer.score_images(img[:1], [prompt], "spatial") == [pytest.approx(0.75)]
    # complex: a relation word and no kind lists -> spatial: (attribute 0.48 + spatial 0.75) / 2
    assert scorer.score_images(img[:1], [prompt], "complex") == [pytest.approx((0.48 + 0.75) / 2)]
    # listed as an action prompt: (attribute + CLIP of the prompt without adjectives 0.2) / 2
    scorer, _ = stub_scorer(ComplexKinds(frozenset(), frozenset({prompt})))
    assert scorer.score_images(img[:1], [prompt], "complex") == [pytest.approx((0.48 + 0.2) / 2)]
    scorer, _ = stub_scorer(ComplexKinds(frozenset({"another prompt"}), frozenset()))  # in neither list
    assert scorer.score_images(img[:1], [prompt], "complex") == [pytest.approx((0.48 + 0.75 + 0.2) / 3)]
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        scorer.score_images(img[:1], [prompt, prompt], "color")


def test_complex_kinds_from_their_files(tmp_path):
    (tmp_path / "complex_val_spatial.txt").write_text("The red book is on the left of the white mug.\r\n")
    (tmp_path / "complex_val_action.txt").write_text("a man is holding a red phone\n")
    kinds = ComplexKinds.from_files(tmp_path / "complex_val_spatial.txt", tmp_path / "complex_val_action.txt")
    assert kinds.kind("the red book is on the left of the white mug.") == "spatial"
    assert kinds.kind("A man is holding a red phone") == "action"
    assert kinds.kind("a cat near a dog is holding a toy") == "spatialaction"


def test_tiny_random_models_load_and_score_every_category(tmp_path):
    cfg = save_tiny_scorers(tmp_path)
    scorer = load_scorer(cfg)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    prompts = {"color": ["a red book and a blue mug", "a green bench"],
               "spatial": ["a horse on the right of a car", "a book on the left of a mug"],
               "non_spatial": ["a horse and a car", "a red book"],
               "complex": ["the red book is on the left of the blue mug", "a green horse and a round car"]}
    for cat, ps in prompts.items():
        s = scorer.score_images(images, ps, cat)
        assert len(s) == 2 and all(np.isfinite(s)), (cat, s)
        if cat != "non_spatial":  # a cosine may be negative
            assert all(0 <= v <= 1 for v in s), (cat, s)
    # BLIP-VQA's P(yes) does not depend on what else is in the batch (padding, order)
    q = ["a red book?", "a green bench and a blue bowl?"]
    both = scorer.blip.yes(list(images), q)
    assert np.allclose(both, [scorer.blip.yes([images[i]], [q[i]])[0] for i in range(2)], atol=1e-3)
    assert ((both > 0) & (both < 1)).all()
    best = scorer.detector.best(images[0], ["horse", "car"])  # threshold 0: every query finds a box
    assert all(b is not None and 0 <= b[0] <= 1 and len(b[1]) == 4 for b in best)
    assert all(-1 <= c <= 481 for b in best for c in b[1])  # in the 480-px frame
