"""Our CompBench folders read back the way T2I-CompBench's own scripts read theirs.

The helpers below restate, from the behaviour of its scripts (GORS_finetune/inference_eval.py, BLIPvqa_eval,
CLIPScore_eval, UniDet_eval, 3_in_1_eval), how they list a folder and what they take from a file name:
- BLIP-VQA and CLIPScore sort ``samples/`` by the number after the last underscore, take the prompt before the
  first underscore, and number the images 0, 1, ... in that order as their question_id;
- UniDet takes the number in the name itself as the question_id;
- 3-in-1 pairs the scores, in that order, with the lines of complex_val.txt in blocks of 10.
"""
import os

import numpy as np

from tsmflow.data.adapters import read_compbench_images
from tsmflow.sampling import folders
from tsmflow.sampling.folders import compbench_folder


def their_listing(out_dir):
    names = sorted(os.listdir(os.path.join(out_dir, "samples")), key=lambda n: int(n.split("_")[-1].split(".")[0]))
    return [{"file": n, "prompt": n.split("_")[0], "qid_enumerated": k, "qid_in_name": int(n.split("_")[-1][:-4])}
            for k, n in enumerate(names)]


def their_3in1_blocks(scores, prompt_lines, num=10):
    return {i: scores[i * num:(i + 1) * num] for i in range(len(prompt_lines))}


def test_compbench_folder_follows_t2i_compbench_numbering(tmp_path, monkeypatch):
    lines = ["a red book is on the left of a white mug", "a conical birthday hat and a spherical piñata",
             "a red book is on the left of a white mug", "people-watching at a café"]  # a repeat, as theirs have
    prompt_file = tmp_path / "complex_val.txt"
    prompt_file.write_text("\r\n".join(lines), encoding="utf-8")  # their files: CRLF, no final newline
    asked = []

    def fake_generate(backbone, prompts, seeds, **kw):
        asked.extend(zip(prompts, seeds))
        return np.stack([np.full((4, 4, 3), s % 256, np.uint8) for s in seeds])

    monkeypatch.setattr(folders, "generate", fake_generate)
    compbench_folder(None, {"complex": str(prompt_file)}, tmp_path / "run", n_per_prompt=10, seed=100)
    out = tmp_path / "run" / "complex"
    # their generator's grids lie beside samples/; our reader passes over them
    (out / f"{lines[0]}-grid-00000.png").write_bytes((out / "samples" / f"{lines[0]}_000000.png").read_bytes())

    listing = their_listing(out)
    assert len(listing) == 10 * len(lines)  # the repeated line keeps its own 10 images
    assert all(r["qid_enumerated"] == r["qid_in_name"] for r in listing)  # BLIP/CLIP and UniDet agree
    blocks = their_3in1_blocks([r["prompt"] for r in listing], lines)
    assert all(set(block) == {lines[i]} for i, block in blocks.items())  # 3-in-1's positional pairing holds
    seeds = {i: [s for _, s in asked[i * 10:(i + 1) * 10]] for i in range(len(lines))}
    assert seeds[0] == list(range(100, 110)) and seeds[1] == list(range(100, 110))
    assert seeds[2] == list(range(110, 120))  # the repeat gets fresh seeds, not the same ten images again
    ours = read_compbench_images(out)
    assert [(r["prompt"], r["idx"]) for r in ours] == [(r["prompt"], r["qid_in_name"]) for r in listing]
