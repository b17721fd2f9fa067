"""T2I-CompBench's scorers at real scale, from transformers models named in config (`t2i_compbench.scorers`).

Each category is scored as T2I-CompBench's evaluation scripts score it, with these models:
- color, shape, texture: BLIP-VQA (`BlipForQuestionAnswering`; theirs: BLIP's vqa_capfilt_large). One question
  "<noun phrase>?" per noun phrase of the prompt (at most `np_num`); the answer's probability is
  p(yes) / (p(yes) + p(no)) at the first decoder token; the score is the product over the questions.
- non_spatial: CLIPScore, the plain cosine of CLIP's image and prompt embeddings (theirs: OpenAI ViT-B/32).
- spatial: an open-vocabulary detector from transformers (OWLv2 or Grounding DINO) **in place of UniDet**, which is
  not packaged. The two objects around the relation are detected; with both found, the score is
  0.25 conf1 + 0.25 conf2 + position / 2, with one found 0.25 conf, and a score below 0.5 becomes 0 (theirs).
  `position_score` is their rule for the relation, with boxes in a 480-px frame (their detector's input size).
  Deviation: they list "on top of" but give it no rule, so it always scores 0; here it is "on the top of".
- complex: 3-in-1, by the prompt's kind: spatial (its relation) -> (attribute + spatial) / 2; action ->
  (attribute + action) / 2; both -> their mean of three. Attribute is BLIP-VQA, spatial the detector, action
  CLIPScore of the prompt without its adjectives. The kind comes from T2I-CompBench's complex_val_{spatial,action}
  files when the config names them, and otherwise from whether the prompt has a relation word.

Noun phrases, nouns and adjectives come from a parser: `spacy` (theirs: en_core_web_sm; installed separately) or
`rule`, which reads template prompts ("a green bench and a blue bowl", "a horse on the right of a car") by their
conjunctions and relation words, with no model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.io import DataError, read_prompts

RELATIONS = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
             "on the top of", "on top of")  # their order: the first one found in the prompt is its relation
SKIP_CHUNKS = {"top", "the side", "the left", "the right"}  # noun chunks of a relation, not objects
ARTICLES = {"a", "an", "the", "some", "two", "one"}
SPLIT = r",| and | is | are | was | were |\bis$|\bare$|\bwas$|\bwere$"  # between a template's noun phrases
FRAME = 480.0  # their detector sees ~480-px images; distance_threshold is in these units
DISTANCE_THRESHOLD, IOU_THRESHOLD, SPATIAL_CUTOFF = 150.0, 0.1, 0.5


def relation_of(prompt: str) -> str | None:
    p = prompt.lower()
    return next((r for r in RELATIONS if r in p), None)


# ---------------------------------------------------------------- parsers

class RuleParser:
    """Template prompts, read without a model: noun phrases are the parts between "and", commas and the relation;
    an object is the last word of its phrase; adjectives are the words of a phrase before its noun."""

    @staticmethod
    def _clean(prompt: str) -> str:
        return " ".join(prompt.lower().replace(".", " ").split())

    def noun_phrases(self, prompt: str) -> list[str]:
        text = self._clean(prompt)
        rel = relation_of(text)
        parts = text.split(rel) if rel else [text]
        phrases = [q.split() for part in parts for q in re.split(SPLIT, part)]
        # "holding a phone" -> "a phone": a leading participle is the verb, not the object
        phrases = [" ".join(w[1:] if len(w) > 1 and w[0].endswith("ing") else w) for w in phrases if w]
        return [q for q in phrases if q not in SKIP_CHUNKS]

    def objects(self, prompt: str) -> tuple[str | None, str | None]:
        """The nouns on the two sides of the prompt's relation (None where a side is missing)."""
        text, rel = self._clean(prompt), relation_of(prompt)
        if rel is None:
            return None, None
        left, _, right = text.partition(rel)
        left_parts = [q for q in re.split(SPLIT, left) if q.strip()]
        right_parts = [q for q in re.split(SPLIT, right) if q.strip()]
        left_words = left_parts[-1].split() if left_parts else []
        right_words = right_parts[0].split() if right_parts else []
        return (left_words[-1] if left_words else None), (right_words[-1] if right_words else None)

    def without_adjectives(self, prompt: str) -> str:
        """The prompt with each noun phrase cut to its article and last word (its noun)."""
        out = self._clean(prompt)
        for np_ in self.noun_phrases(prompt):
            words = np_.split()
            keep = [w for w in words[:-1] if w in ARTICLES] + words[-1:]
            out = out.replace(np_, " ".join(keep), 1)
        return out


class SpacyParser:
    """spaCy's noun chunks, NOUN tokens and ADJ tokens, as T2I-CompBench uses them (`model`: e.g. en_core_web_sm,
    or a local directory)."""

    def __init__(self, model: str):
        try:
            import spacy
        except ImportError as e:
            raise ImportError("t2i_compbench.scorers.parser: spacy needs `pip install spacy` and its model "
                              f"({model}); or use parser: rule") from e
        self.nlp = spacy.load(model)

    def noun_phrases(self, prompt: str) -> list[str]:
        return [c.text for c in self.nlp(prompt).noun_chunks if c.text not in SKIP_CHUNKS]

    def objects(self, prompt: str) -> tuple[str | None, str | None]:
        nouns = [t.text for t in self.nlp(prompt) if t.pos_ == "NOUN"]
        return (nouns[0], nouns[-1]) if len(nouns) >= 2 else (nouns[0] if nouns else None, None)

    def without_adjectives(self, prompt: str) -> str:
        return " ".join(t.text for t in self.nlp(prompt) if t.pos_ != "ADJ")


def make_parser(name: str):
    if name == "rule":
        return RuleParser()
    if name.startswith("spacy:"):
        return SpacyParser(name.split(":", 1)[1])
    raise ValueError(f"t2i_compbench.scorers.parser must be 'rule' or 'spacy:<model>', not {name!r}")


# ---------------------------------------------------------------- the scoring arithmetic

def yes_probability(logit_yes: torch.Tensor, logit_no: torch.Tensor) -> torch.Tensor:
    """p(yes) / (p(yes) + p(no)) from the first decoder token's logits: a softmax over the two."""
    return torch.softmax(torch.stack([logit_yes.float(), logit_no.float()], -1), -1)[..., 0]


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def position_score(relation: str, box1, box2) -> float:
    """Their determine_position: does box1 (x0, y0, x1, y1, in the 480-px frame) stand in `relation` to box2?"""
    dx = (box2[0] + box2[2]) / 2 - (box1[0] + box1[2]) / 2
    dy = (box2[1] + box2[3]) / 2 - (box1[1] + box1[3]) / 2
    overlap = iou(box1, box2)
    apart = 1.0 if overlap < IOU_THRESHOLD else IOU_THRESHOLD / overlap
    if relation in ("next to", "on side of", "near"):
        far = max(abs(dx), abs(dy))
        return 1.0 if abs(dx) < DISTANCE_THRESHOLD or abs(dy) < DISTANCE_THRESHOLD else DISTANCE_THRESHOLD / far
    horizontal = abs(dx) > abs(dy)
    holds = {"on the right of": dx < 0 and horizontal, "on the left of": dx > 0 and horizontal,
             "on the bottom of": dy < 0 and not horizontal, "on the top of": dy > 0 and not horizontal,
             "on top of": dy > 0 and not horizontal}.get(relation)
    if holds is None:
        raise ValueError(f"unknown relation {relation!r}")
    return apart if holds else 0.0


def spatial_score(relation: str | None, det1, det2) -> float:
    """det: (confidence, box in the 480-px frame) of an object's best detection, or None if not detected."""
    if relation is None:
        return 0.0
    if det1 is not None and det2 is not None:
        s = 0.25 * det1[0] + 0.25 * det2[0] + position_score(relation, det1[1], det2[1]) / 2
    elif det1 is not None or det2 is not None:
        s = 0.25 * (det1 or det2)[0]
    else:
        s = 0.0
    return s if s >= SPATIAL_CUTOFF else 0.0


def three_in_one(kind: str, attribute: float, spatial: float, action: float) -> float:
    if kind == "spatial":
        return (attribute + spatial) / 2
    if kind == "action":
        return (attribute + action) / 2
    if kind == "spatialaction":
        return (attribute + spatial + action) / 3
    raise ValueError(f"unknown complex prompt kind {kind!r}")


# ---------------------------------------------------------------- the models

def _from_pretrained(cls, name: str, local_files_only: bool, **kw):
    return cls.from_pretrained(name, local_files_only=local_files_only, **kw)


class BlipVqa:
    """P(yes) of BLIP-VQA for (image, question) pairs."""

    def __init__(self, name: str, local_files_only: bool, device, dtype=torch.float32):
        from transformers import BlipForQuestionAnswering, BlipProcessor
        self.model = _from_pretrained(BlipForQuestionAnswering, name, local_files_only, dtype=dtype).to(device).eval()
        self.processor = _from_pretrained(BlipProcessor, name, local_files_only)
        tok = self.processor.tokenizer
        self.yes_id, self.no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        if tok.unk_token_id in (self.yes_id, self.no_id):
            raise DataError(f"{name}: its tokenizer has no 'yes'/'no' token")

    @torch.no_grad()
    def yes(self, images: list[np.ndarray], questions: list[str]) -> np.ndarray:
        m, dev = self.model, self.model.device
        inp = self.processor(images=list(images), text=questions, return_tensors="pt", padding=True).to(dev)
        img = m.vision_model(pixel_values=inp["pixel_values"].to(m.dtype)).last_hidden_state
        q = m.text_encoder(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"],
                           encoder_hidden_states=img,
                           encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long, device=dev))
        start = torch.full((len(questions), 1), m.config.text_config.bos_token_id, device=dev)
        logits = m.text_decoder(input_ids=start, encoder_hidden_states=q.last_hidden_state,
                                encoder_attention_mask=inp["attention_mask"]).logits[:, 0]
        return yes_probability(logits[:, self.yes_id], logits[:, self.no_id]).cpu().numpy()


class Detector:
    """Open-vocabulary detection of named objects: each query's most confident box above `threshold`."""

    def __init__(self, name: str, local_files_only: bool, device, threshold: float, dtype=torch.float32):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        self.model = _from_pretrained(AutoModelForZeroShotObjectDetection, name, local_files_only,
                                      dtype=dtype).to(device).eval()
        self.processor = _from_pretrained(AutoProcessor, name, local_files_only)
        self.threshold = threshold

    @torch.no_grad()
    def best(self, image: np.ndarray, queries: list[str]) -> list[tuple[float, list[float]] | None]:
        """Per query: (confidence, box in the 480-px frame) of its best detection, or None."""
        h, w = image.shape[:2]
        inp = self.processor(text=[queries], images=[image], return_tensors="pt").to(self.model.device)
        out = self.model(**inp)
        side = max(h, w)  # OWLv2 pads to a square: its boxes are in the padded frame
        res = self.processor.post_process_grounded_object_detection(
            out, threshold=self.threshold, target_sizes=torch.tensor([[side, side]]))[0]
        best: list[tuple[float, list[float]] | None] = [None] * len(queries)
        for score, label, box in zip(res["scores"].tolist(), res["labels"].tolist(), res["boxes"].tolist()):
            if best[label] is None or score > best[label][0]:
                best[label] = (score, [c * FRAME / side for c in box])
        return best


@dataclass
class ComplexKinds:
    """Which complex prompts are spatial, action or both (T2I-CompBench's complex_val_{spatial,action} files)."""
    spatial: frozenset[str] = frozenset()
    action: frozenset[str] = frozenset()

    @classmethod
    def from_files(cls, spatial=(), action=()) -> ComplexKinds:
        """From lists of prompt files (e.g. complex_train_spatial.txt and complex_val_spatial.txt)."""
        def norm(paths):
            paths = [paths] if isinstance(paths, (str, Path)) else paths
            return frozenset(p.split(".")[0].lower() for path in paths for p in read_prompts(path))
        return cls(norm(spatial), norm(action))

    def kind(self, prompt: str) -> str:
        key = prompt.split(".")[0].lower()
        if key in self.spatial:
            return "spatial"
        if key in self.action:
            return "action"
        if self.spatial or self.action:
            return "spatialaction"  # their third list: neither of the two
        return "spatial" if relation_of(prompt) else "action"


class T2ICompBenchScorer:
    """Scores in [0, 1] for the six categories (`cfg`: config t2i_compbench.scorers, see the schema)."""

    def __init__(self, cfg: dict, device="cpu", blip=None, clip=None, detector=None, parser=None):
        from .clip_score import load_clip_scorer
        local = cfg.get("local_files_only", False)
        self.np_num = cfg.get("np_num", 8)
        self.parser = parser or make_parser(cfg.get("parser", "rule"))
        self.blip = blip or BlipVqa(cfg["blip_vqa"], local, device)
        if clip is None:
            clip = load_clip_scorer({"pretrained": cfg["clip"], "local_files_only": local})
            clip.model.to(device)
        self.clip = clip
        self.detector = detector or Detector(cfg["detector"], local, device, cfg.get("detector_threshold", 0.1))
        self.kinds = ComplexKinds.from_files(cfg.get("complex_spatial", []), cfg.get("complex_action", []))
        self.batch_size = cfg.get("batch_size", 16)

    def attribute(self, images, prompts) -> np.ndarray:
        """BLIP-VQA: the product of P(yes) over each prompt's noun-phrase questions."""
        pairs = [(i, f"{np_}?") for i, p in enumerate(prompts) for np_ in self.parser.noun_phrases(p)[:self.np_num]]
        out = np.ones(len(prompts))
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s:s + self.batch_size]
            probs = self.blip.yes([images[i] for i, _ in chunk], [q for _, q in chunk])
            for (i, _), p in zip(chunk, probs):
                out[i] *= round(float(p), 4)  # theirs rounds each answer to 4 decimals
        return out

    def spatial(self, images, prompts) -> np.ndarray:
        out = []
        for image, prompt in zip(images, prompts):
            obj1, obj2 = self.parser.objects(prompt)
            queries = [o for o in (obj1, obj2) if o]
            found = dict(zip(queries, self.detector.best(image, queries))) if queries else {}
            out.append(spatial_score(relation_of(prompt), found.get(obj1), found.get(obj2)))
        return np.array(out)

    def clip_score(self, images, texts) -> np.ndarray:
        return self.clip.scores(list(images), list(texts), self.batch_size)

    def score_images(self, images: np.ndarray, prompts: list[str], category: str) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if category in ("color", "shape", "texture"):
            return self.attribute(images, prompts).tolist()
        if category == "non_spatial":
            return self.clip_score(images, prompts).tolist()
        if category == "spatial":
            return self.spatial(images, prompts).tolist()
        if category == "complex":
            attr = self.attribute(images, prompts)
            spatial = self.spatial(images, prompts)
            action = self.clip_score(images, [self.parser.without_adjectives(p) for p in prompts])
            return [three_in_one(self.kinds.kind(p), a, s, c)
                    for p, a, s, c in zip(prompts, attr, spatial, action)]
        raise ValueError(f"unknown category {category!r}")


def load_scorer(cfg: dict, device="cpu") -> T2ICompBenchScorer:
    missing = [k for k in ("blip_vqa", "clip", "detector") if not cfg.get(k)]
    if missing:
        raise DataError(f"config t2i_compbench.scorers lacks {missing}")
    for key in ("complex_spatial", "complex_action"):
        for f in cfg.get(key, []):
            if not Path(f).is_file():
                raise DataError(f"{f}: T2I-CompBench's {key} prompt list not found")
    return T2ICompBenchScorer(cfg, device)
