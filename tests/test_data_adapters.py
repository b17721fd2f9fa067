"""The real-dataset adapters, on tiny fixtures in the real formats; each bad input fails naming its file."""
import io
import json
import os
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from tsmflow.data.adapters import (BadSamples, TarShards, coco_fid_prompts, coco_reference_folder, coco_subsample,
                                   compbench_prompt_files, expand_shards, parse_compbench_name,
                                   read_coco_captions, read_compbench_images, read_compbench_prompts,
                                   read_compbench_run, read_image_text_folder, write_coco_prompts)
from tsmflow.data.grammar import CATEGORIES
from tsmflow.data.io import DataError, read_labels

# ---------------------------------------------------------------- fixtures in the real formats

PROMPTS = {  # two prompts per category and split, in T2I-CompBench's style
    "color": ["a green bench and a blue bowl", "a brown horse and a blue vase"],
    "shape": ["a round clock and a square table", "an oval mirror and a triangular sign"],
    "texture": ["a wooden chair and a metallic car", "a fluffy towel and a glass cup"],
    "spatial": ["a horse on the right of a car", "a cat on top of a box"],
    "non_spatial": ["a man is holding a phone", "a dog is chasing a ball"],
    "complex": ["the red book is on the left of the white mug", "a black cat sleeps beside a blue pillow"],
}


def image_bytes(fmt: str, size=(8, 6), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_prompt_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for cat, prompts in PROMPTS.items():
        (folder / f"{cat}_train.txt").write_text("\n".join(prompts) + "\n")
        (folder / f"{cat}_val.txt").write_text("\n\n".join(reversed(prompts)) + "\n")  # blank lines are skipped
    # files that T2I-CompBench's folder also has and that are not train/val files
    (folder / "color.txt").write_text("a red apple\n")
    (folder / "color_val_seen.txt").write_text("a red apple\n")
    (folder / "complex_val_action.txt").write_text("a girl eats a red apple\n")
    return folder


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                add_member(tar, f"{key}.{ext}", data)


def laion_sample(key: str, caption: str, fmt="JPEG", ext="jpg", meta=True) -> tuple[str, dict[str, bytes]]:
    files = {ext: image_bytes(fmt), "txt": caption.encode()}
    if meta:
        files["json"] = json.dumps({"key": key, "caption": caption, "width": 8, "height": 6}).encode()
    return key, files


def write_coco(root, n_images=6, drop_image=None):
    """captions_val2014.json in COCO's layout, and a val2014/ folder of 40x24 JPEGs."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images, anns, ann_id = [], [], 900
    for i in range(n_images):
        image_id = 100 + 7 * i
        name = f"COCO_val2014_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": 40, "height": 24, "license": 1})
        if name != drop_image:
            arr = np.zeros((24, 40, 3), np.uint8)
            arr[:, :8] = arr[:, 32:] = (255, 0, 0)  # red side bands that a center crop removes
            arr[:, 8:32] = (0, 0, 255)
            Image.fromarray(arr).save(root / "val2014" / name, quality=95)
        for k in range(5):
            anns.append({"image_id": image_id, "id": ann_id, "caption": f"image {image_id} caption {k}\n "})
            ann_id -= 1  # the json lists captions with decreasing ids, so "first" must sort
    path = root / "annotations" / "captions_val2014.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns}))
    return path, root / "val2014"


# ---------------------------------------------------------------- T2I-CompBench

def test_compbench_prompt_folder_reads_every_category_and_split(tmp_path):
    folder = write_prompt_folder(tmp_path / "dataset")
    files = compbench_prompt_files(folder)
    assert sorted(files) == sorted(CATEGORIES)  # color.txt, color_val_seen.txt, ... are not train/val files
    assert files["non_spatial"]["val"].name == "non_spatial_val.txt"
    prompts = read_compbench_prompts(folder)
    assert list(prompts) == list(CATEGORIES)
    for cat in CATEGORIES:
        assert prompts[cat]["train"] == PROMPTS[cat]
        assert prompts[cat]["val"] == PROMPTS[cat][::-1]
    assert read_compbench_prompts(folder, ["spatial"], ["val"]) == {"spatial": {"val": PROMPTS["spatial"][::-1]}}


def test_compbench_prompt_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope: T2I-CompBench prompt folder not found"):
        read_compbench_prompts(tmp_path / "nope")
    folder = write_prompt_folder(tmp_path / "dataset")
    (folder / "texture_val.txt").unlink()
    with pytest.raises(DataError, match=r"texture_val.txt: prompt file not found for category 'texture'"):
        read_compbench_prompts(folder)
    assert list(read_compbench_prompts(folder, ["color"])) == ["color"]  # other categories still read
    (folder / "shape_train.txt").write_text("\n   \n")
    with pytest.raises(DataError, match=r"shape_train.txt: prompt file is empty"):
        read_compbench_prompts(folder, ["shape"])


def test_compbench_image_names_parse_as_the_evaluators_expect(tmp_path):
    assert parse_compbench_name("a green bench and a blue bowl_000002.png") == ("a green bench and a blue bowl", 2)
    assert parse_compbench_name(tmp_path / "a_b_000013.png") == ("a_b", 13)  # split at the last underscore
    for bad in ("a red apple.png", "a red apple_12.png", "a red apple_00001x.png", "_000001.png",
                "a red apple_000001.jpg"):
        with pytest.raises(DataError, match=re.escape(bad)):
            parse_compbench_name(bad)


def test_compbench_images_in_both_layouts(tmp_path):
    png = image_bytes("PNG")
    flat, theirs = tmp_path / "flat", tmp_path / "theirs"
    for cat in ("color", "spatial"):
        (flat / cat).mkdir(parents=True)
        (theirs / cat / "samples").mkdir(parents=True)
        for j, p in enumerate(PROMPTS[cat]):
            (theirs / cat / f"{p}-grid-{j:05d}.png").write_bytes(png)  # its generator's grids beside samples/
            for i in range(2):
                (flat / cat / f"{p}_{2 * j + i:06d}.png").write_bytes(png)  # images in the category folder
                (theirs / cat / "samples" / f"{p}_{2 * j + i:06d}.png").write_bytes(png)  # T2I-CompBench's out_dir
    (theirs / "color" / "annotation_blip").mkdir()  # what its evaluator leaves beside samples/
    run_flat = read_compbench_run(flat, ["color", "spatial"])
    run_theirs = read_compbench_run(theirs, ["color", "spatial"])
    for cat in ("color", "spatial"):
        got = [(r["category"], r["prompt"], r["idx"]) for r in run_flat[cat]]
        assert got == [(cat, p, 2 * j + i) for j, p in enumerate(PROMPTS[cat]) for i in range(2)]  # index order
        assert got == [(r["category"], r["prompt"], r["idx"]) for r in run_theirs[cat]]
    one = read_compbench_images(theirs / "color")
    assert len(one) == 4 and all("/samples/" in r["file"] and os.path.isfile(r["file"]) for r in one)


def test_compbench_image_folder_errors_name_the_file(tmp_path):
    cat = tmp_path / "run" / "color"
    cat.mkdir(parents=True)
    with pytest.raises(DataError, match="color: no generated images"):
        read_compbench_images(cat)
    (cat / "a green bench and a blue bowl_000000.png").write_bytes(image_bytes("PNG"))
    (cat / "a green bench and a blue bowl_7.png").write_bytes(image_bytes("PNG"))
    with pytest.raises(DataError, match=r"a green bench and a blue bowl_7.png: not named <prompt>_<6-digit index>"):
        read_compbench_images(cat)
    (cat / "a green bench and a blue bowl_7.png").unlink()
    with pytest.raises(DataError, match=r"shape: no image folder for category 'shape' \(found: color\)"):
        read_compbench_run(tmp_path / "run", ["color", "shape"])
    (cat / "samples").mkdir()
    with pytest.raises(DataError, match=r"color: has images both beside samples/ \(a green bench and a blue "
                                        r"bowl_000000.png\) and in it"):
        read_compbench_images(cat)
    with pytest.raises(DataError, match="missing: image folder not found"):
        read_compbench_run(tmp_path / "missing")


# ---------------------------------------------------------------- COCO 2014

def test_coco_captions_records(tmp_path):
    ann, img_dir = write_coco(tmp_path)
    records = read_coco_captions(ann, img_dir)
    assert len(records) == 30
    assert records[0] == {"file": str(img_dir / "COCO_val2014_000000000100.jpg"), "caption": "image 100 caption 4",
                          "image_id": 100, "caption_id": 896}  # sorted by caption id; whitespace collapsed
    assert [r["image_id"] for r in records] == sorted(r["image_id"] for r in records)


def test_coco_subsample_is_deterministic_nested_and_one_caption_per_image(tmp_path):
    ann, img_dir = write_coco(tmp_path)
    records = read_coco_captions(ann, img_dir)
    a = coco_subsample(records, 4, seed=0)
    assert a == coco_subsample(records, 4, seed=0)
    assert len({r["image_id"] for r in a}) == 4
    assert coco_subsample(records, 6, seed=0)[:4] == a  # a smaller draw is a prefix of a larger one
    assert [r["image_id"] for r in coco_subsample(records, 6, seed=1)] != [r["image_id"] for r in
                                                                          coco_subsample(records, 6, seed=0)]
    # "first": the caption with the lowest annotation id, whatever the seed
    assert all(r["caption"] == f"image {r['image_id']} caption 4" for r in a)
    rand = coco_subsample(records, 6, seed=3, caption="random")
    assert rand == coco_subsample(records, 6, seed=3, caption="random")
    assert coco_subsample(records, 2, seed=3, caption="random") == rand[:2]  # an image's caption ignores n
    assert len({r["caption"].split()[-1] for r in rand}) > 1  # not always the same caption index
    with pytest.raises(ValueError, match="only 6 have captions"):
        coco_subsample(records, 7, seed=0)


def test_coco_fid_prompts_files_and_reference_folder(tmp_path):
    ann, img_dir = write_coco(tmp_path / "coco")
    chosen = coco_fid_prompts(ann, img_dir, n=3, seed=0)
    assert chosen == coco_subsample(read_coco_captions(ann, img_dir), 3, 0)
    write_coco_prompts(chosen, tmp_path / "fid/captions.txt", tmp_path / "fid/reference.txt")
    assert (tmp_path / "fid/captions.txt").read_text().splitlines() == [r["caption"] for r in chosen]
    assert (tmp_path / "fid/reference.txt").read_text().splitlines() == [r["file"] for r in chosen]

    coco_reference_folder(chosen, tmp_path / "ref16", resolution=16)
    labels = read_labels(tmp_path / "ref16/labels.jsonl")
    assert [lab["caption"] for lab in labels] == [r["caption"] for r in chosen]
    for lab in labels:
        arr = np.asarray(Image.open(tmp_path / "ref16" / lab["file"]))
        assert arr.shape == (16, 16, 3) and lab["file"].endswith(".png")
        # the 40x24 image's center 24x24 square is blue: the red side bands were cropped away
        assert arr[..., 2].min() > 200 and arr[..., 0].max() < 60

    coco_reference_folder(chosen, tmp_path / "ref", resolution=None)
    linked = sorted(p for p in (tmp_path / "ref").iterdir() if p.suffix == ".jpg")
    assert [p.name for p in linked] == sorted(os.path.basename(r["file"]) for r in chosen)
    assert all(p.is_symlink() and p.resolve() == (img_dir / p.name).resolve() for p in linked)


def test_coco_errors_name_the_file(tmp_path):
    ann, img_dir = write_coco(tmp_path / "coco", drop_image="COCO_val2014_000000000114.jpg")
    with pytest.raises(DataError, match="captions_train2014.json: file not found"):
        read_coco_captions(ann.with_name("captions_train2014.json"), img_dir)
    with pytest.raises(DataError, match=r"1 of 6 images are missing: COCO_val2014_000000000114.jpg"):
        coco_fid_prompts(ann, img_dir, n=6, seed=0)
    assert len(coco_fid_prompts(ann, img_dir, n=6, seed=0, check_images=False)) == 6
    with pytest.raises(DataError, match="captions_val2014.json: asked for 7 images, but only 6"):
        coco_fid_prompts(ann, img_dir, n=7, seed=0)
    with pytest.raises(DataError, match="val2015: image folder not found"):
        coco_fid_prompts(ann, tmp_path / "coco/val2015", n=2, seed=0)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.json").write_text("")
    with pytest.raises(DataError, match="empty.json: not valid JSON"):
        read_coco_captions(bad / "empty.json", img_dir)
    (bad / "broken.json").write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        read_coco_captions(bad / "broken.json", img_dir)
    (bad / "instances.json").write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match="instances.json: not a COCO captions file"):
        read_coco_captions(bad / "instances.json", img_dir)
    (bad / "none.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="none.json: no captions"):
        read_coco_captions(bad / "none.json", img_dir)
    (bad / "orphan.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                                 "annotations": [{"image_id": 2, "id": 5, "caption": "x"}]}))
    with pytest.raises(DataError, match="orphan.json: caption 5 refers to image 2"):
        read_coco_captions(bad / "orphan.json", img_dir)
    (bad / "nocap.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                                "annotations": [{"image_id": 1, "id": 5}]}))
    with pytest.raises(DataError, match=r"nocap.json: annotations\[0\] lacks image_id/id/caption"):
        read_coco_captions(bad / "nocap.json", img_dir)
    (bad / "dup_image.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 1, "id": 5, "caption": "x"}]}))
    with pytest.raises(DataError, match=r"dup_image.json: image id 1 appears twice in 'images' \(a.jpg and b.jpg\)"):
        read_coco_captions(bad / "dup_image.json", img_dir)
    (bad / "dup_ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 1, "id": 5, "caption": "x"}, {"image_id": 2, "id": 5, "caption": "y"}]}))
    with pytest.raises(DataError, match=r"dup_ann.json: annotation id 5 appears twice in 'annotations' "
                                        r"\(the second at annotations\[1\]\)"):
        read_coco_captions(bad / "dup_ann.json", img_dir)
    (img_dir / "COCO_val2014_000000000100.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    first = [r for r in read_coco_captions(ann, img_dir) if r["image_id"] == 100][:1]
    with pytest.raises(DataError, match="COCO_val2014_000000000100.jpg: unreadable image"):
        coco_reference_folder(first, tmp_path / "ref", resolution=16)
    assert not (tmp_path / "ref").exists()  # an interrupted reference folder leaves nothing behind


# ---------------------------------------------------------------- LAION-style image-text data

def test_image_text_folder(tmp_path):
    root = tmp_path / "laion"
    (root / "00001").mkdir(parents=True)
    for name, fmt, ext, cap in [("000000000", "JPEG", "jpg", "a dog on a beach"),
                                ("000000001", "PNG", "png", "  a red\ncar  "),
                                ("00001/000010000", "WEBP", "webp", "a bowl of soup")]:
        (root / f"{name}.{ext}").write_bytes(image_bytes(fmt))
        (root / f"{name}.txt").write_text(cap)
    (root / "000000000.json").write_text("{}")  # img2dataset's metadata beside each image is ignored
    records = read_image_text_folder(root)
    assert [(os.path.relpath(r["file"], root), r["caption"]) for r in records] == [
        ("000000000.jpg", "a dog on a beach"), ("000000001.png", "a red car"),
        ("00001/000010000.webp", "a bowl of soup")]
    assert all(Image.open(r["file"]).size == (8, 6) for r in records)

    (root / "000000002.jpg").write_bytes(image_bytes("JPEG"))
    with pytest.raises(DataError, match=r"000000002.jpg: no caption file 000000002.txt"):
        read_image_text_folder(root)
    (root / "000000002.txt").write_text(" \n")  # img2dataset writes "" for a null caption
    with pytest.raises(DataError, match=r"000000002.txt: caption file is empty"):
        read_image_text_folder(root)
    bad = BadSamples(skip=True, max_fraction=0.5)
    assert len(read_image_text_folder(root, bad)) == 3
    assert bad.skipped == [{"sample": str(root / "000000002.jpg"), "reason": "empty caption",
                            "error": f"{root / '000000002.txt'}: caption file is empty"}]
    assert [os.path.relpath(r["file"], root) for r in read_image_text_folder(root, BadSamples(True, 1.0), limit=2)] \
        == ["000000000.jpg", "000000001.png"]
    with pytest.raises(DataError, match="nowhere: image-text folder not found"):
        read_image_text_folder(tmp_path / "nowhere")
    (tmp_path / "captions_only").mkdir()
    (tmp_path / "captions_only" / "a.txt").write_text("a cat")
    with pytest.raises(DataError, match="captions_only: no images"):
        read_image_text_folder(tmp_path / "captions_only")


def test_expand_shards(tmp_path):
    for i in range(12):
        (tmp_path / f"shard-{i:06d}.tar").write_bytes(b"")
    got = expand_shards(str(tmp_path / "shard-{000000..000003}.tar"))
    assert [p.name for p in got] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert [p.name for p in expand_shards(str(tmp_path / "shard-0000{08..11}.tar"))] == [
        "shard-000008.tar", "shard-000009.tar", "shard-000010.tar", "shard-000011.tar"]
    assert [p.name for p in expand_shards(str(tmp_path / "shard-00000{1,5}.tar"))] == [
        "shard-000001.tar", "shard-000005.tar"]
    assert expand_shards([tmp_path / "shard-000002.tar", str(tmp_path / "shard-000000.tar")]) == [
        tmp_path / "shard-000002.tar", tmp_path / "shard-000000.tar"]
    with pytest.raises(DataError, match=r"shard-000012.tar: tar shard not found \(2 of 4 missing"):
        expand_shards(str(tmp_path / "shard-{000010..000013}.tar"))
    with pytest.raises(DataError, match="nested braces"):
        expand_shards(str(tmp_path / "shard-{0000{1,2}}.tar"))
    with pytest.raises(DataError, match="unbalanced braces"):
        expand_shards(str(tmp_path / "shard-000001}.tar"))


def test_tar_shards_iterate_samples_in_order(tmp_path):
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards/shard-000000.tar", [laion_sample("000000000", "a dog"),
                                                       laion_sample("000000001", "a cat", "PNG", "png", meta=False)])
    write_shard(tmp_path / "shards/shard-000001.tar", [laion_sample("000010000", "a  red\ncar", "WEBP", "webp")])
    reader = TarShards(str(tmp_path / "shards/shard-{000000..000001}.tar"))
    samples = list(reader)
    assert [(k, c) for k, _, c in samples] == [("000000000", "a dog"), ("000000001", "a cat"),
                                               ("000010000", "a red car")]
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (8, 6) for _, im, _ in samples)
    assert np.asarray(samples[1][1])[0, 0].tolist() == [200, 30, 30]  # PNG is lossless
    assert reader.bad.skipped == [] and len(list(reader)) == 3  # the reader can be iterated again
    assert reader.bad.seen == 3


def test_tar_shards_corrupt_image_raises_or_is_skipped(tmp_path):
    shard = tmp_path / "shard-000000.tar"
    bad = ("000000001", {"jpg": image_bytes("JPEG")[:40], "txt": b"a truncated jpeg"})
    write_shard(shard, [laion_sample("000000000", "a dog"), bad, laion_sample("000000002", "a cat")])
    with pytest.raises(DataError, match=r"shard-000000.tar: 000000001.jpg: unreadable image"):
        list(TarShards([shard]))
    reader = TarShards([shard], BadSamples(skip=True, max_fraction=0.5))
    assert [k for k, _, _ in reader] == ["000000000", "000000002"]
    assert [(s["sample"], s["reason"]) for s in reader.bad.skipped] == [("shard-000000.tar:000000001",
                                                                        "unreadable image")]
    assert "000000001.jpg: unreadable image" in reader.bad.skipped[0]["error"]
    reader.bad.check("shards")  # 1 of 3 is under the allowed half
    reader = TarShards([shard], BadSamples(skip=True, max_fraction=0.2))
    list(reader)
    with pytest.raises(DataError, match=r"shards: 1 of 3 samples were skipped \(\{'unreadable image': 1\}; "
                                        r"first: shard-000000.tar:000000001\), more than bad_samples.max_fraction=0.2"):
        reader.bad.check("shards")


def test_tar_shards_empty_captions_are_bad_samples(tmp_path):
    shard = tmp_path / "shard-000000.tar"
    write_shard(shard, [laion_sample("000000000", "a dog"), laion_sample("000000001", ""),
                        laion_sample("000000002", "  \n")])
    with pytest.raises(DataError, match=r"shard-000000.tar: 000000001.txt: caption is empty"):
        list(TarShards(shard))
    reader = TarShards(shard, BadSamples(skip=True, max_fraction=1.0))
    assert [k for k, _, _ in reader] == ["000000000"]
    assert reader.bad.counts() == {"empty caption": 2} and reader.bad.seen == 3
    only_bad = TarShards(shard, BadSamples(skip=True, max_fraction=1.0))
    write_shard(shard, [laion_sample("000000001", "")])
    list(only_bad)  # every sample skipped fails even at max_fraction 1
    with pytest.raises(DataError, match="1 of 1 samples were skipped"):
        only_bad.bad.check("shards")


def test_tar_shards_missing_caption_and_broken_shard(tmp_path):
    shard = tmp_path / "shard-000003.tar"
    write_shard(shard, [laion_sample("000000000", "a dog"), ("000000001", {"jpg": image_bytes("JPEG")})])
    with pytest.raises(DataError, match=r"shard-000003.tar: sample '000000001' has no caption \(000000001.txt\)"):
        list(TarShards(shard, BadSamples(skip=True, max_fraction=1.0)))  # a missing caption member is structural
    write_shard(shard, [("000000005", {"txt": b"caption only", "json": b"{}"})])
    with pytest.raises(DataError, match=r"sample '000000005' has no image"):
        list(TarShards(shard))
    garbage = tmp_path / "shard-000004.tar"
    garbage.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(DataError, match="shard-000004.tar: unreadable tar shard"):
        list(TarShards(garbage))
    full = tmp_path / "shard-000005.tar"
    write_shard(full, [laion_sample("000000000", "a dog"), laion_sample("000000001", "a cat")])
    truncated = tmp_path / "shard-000006.tar"
    truncated.write_bytes(full.read_bytes()[:700])  # cut inside the first image
    with pytest.raises(DataError, match="shard-000006.tar: unreadable tar shard"):
        list(TarShards(truncated))


def test_image_text_pairs_skip_bad_samples_by_config_and_count_them(tmp_path):
    from tsmflow.data.image_text import image_text_pairs
    root = tmp_path / "laion"
    root.mkdir()
    for k, (data, caption) in enumerate([(image_bytes("JPEG"), "a dog"), (image_bytes("JPEG")[:40], "a cut jpeg"),
                                         (image_bytes("PNG"), ""), (image_bytes("PNG"), "a cat")]):
        (root / f"{k:09d}.jpg").write_bytes(data)
        (root / f"{k:09d}.txt").write_text(caption)
    data = {"image_text_folder": str(root)}
    with pytest.raises(DataError, match=r"000000002.txt: caption file is empty"):  # captions are read first
        list(image_text_pairs(data, BadSamples.from_config(None)))  # no bad_samples key: the first one fails
    (root / "000000002.txt").write_text("a bird")
    with pytest.raises(DataError, match=r"000000001.jpg: unreadable image"):
        list(image_text_pairs(data, BadSamples.from_config(None)))
    (root / "000000002.txt").write_text("")
    bad = BadSamples.from_config({"skip": True, "max_fraction": 0.5})
    got = list(image_text_pairs(data, bad))
    assert [c for _, _, c in got] == ["a dog", "a cat"] and all(im.mode == "RGB" for _, im, _ in got)
    assert bad.seen == 4 and bad.counts() == {"unreadable image": 1, "empty caption": 1}
    bad.check("laion")  # 2 of 4 is not more than half
    strict = BadSamples.from_config({"skip": True, "max_fraction": 0.25})
    list(image_text_pairs(data, strict))
    with pytest.raises(DataError, match=r"laion: 2 of 4 samples were skipped"):
        strict.check("laion")
    limited = BadSamples(True, 1.0)
    assert len(list(image_text_pairs({**data, "max_images": 1}, limited))) == 1 and limited.seen == 1
