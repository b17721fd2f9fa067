"""Word-level tokenizer and the tiny CLIP text encoder."""
import torch

from tsmflow.data import grammar as G
from tsmflow.models.text import ContrastiveObjective, build_tokenizer, clip_config, export_text_encoder


def test_vocabulary_covers_every_prompt_without_unknowns():
    tok = build_tokenizer(G.vocabulary(), 24)
    rare = G.parse_rare_pairs(["magenta triangle"])
    for cat in G.CATEGORIES:
        train, val = G.compbench_split(cat, 20, 5, 0, rare, 0.5)
        for p in train + val:
            ids = tok(p).input_ids
            assert tok.unk_token_id not in ids and len(ids) <= 24
            assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
            assert tok.decode(ids, skip_special_tokens=True) == p
    assert tok.unk_token_id in tok("a purple circle").input_ids


def test_exported_text_encoder_matches_clip_text_tower(tmp_path):
    from transformers import CLIPModel, CLIPTextModelWithProjection, PreTrainedTokenizerFast
    tok = build_tokenizer(G.vocabulary(), 24)
    clip = CLIPModel(clip_config(tok, {"hidden_size": 16, "layers": 1, "heads": 2, "projection_dim": 8,
                                       "patch_size": 8}, 16)).eval()
    text = export_text_encoder(clip)
    text.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    text2 = CLIPTextModelWithProjection.from_pretrained(tmp_path).eval()
    tok2 = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    enc = tok2(["a red circle", "a small blue square"], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        want = clip.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        want = getattr(want, "pooler_output", want)
        got = text2(input_ids=enc.input_ids, attention_mask=enc.attention_mask).text_embeds
    assert torch.allclose(want, got, atol=1e-5)
    # pooled output is taken at <eos>, so it depends on the whole caption
    assert not torch.allclose(got[0], got[1])


def test_contrastive_objective_is_finite_and_trainable():
    tok = build_tokenizer(G.vocabulary(), 24)
    from transformers import CLIPModel
    clip = CLIPModel(clip_config(tok, {"hidden_size": 16, "layers": 1, "heads": 2, "projection_dim": 8,
                                       "patch_size": 8}, 16))
    loss = ContrastiveObjective(clip, tok)({"pixels": torch.randn(4, 3, 16, 16),
                                           "caption": ["a red circle", "a blue square", "a circle", "a square"]})
    loss.backward()
    assert torch.isfinite(loss) and clip.text_projection.weight.grad.abs().sum() > 0
