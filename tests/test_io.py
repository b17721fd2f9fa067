"""Bad input fails clearly, naming the file; interrupted writes leave nothing behind."""
import json

import numpy as np
import pytest

from tsmflow.data.io import (DataError, atomic_dir, atomic_path, load_dataset, load_image, read_labels,
                             read_prompts, save_png, write_labels)


def test_missing_and_empty_prompt_files(tmp_path):
    with pytest.raises(DataError, match="prompt file not found"):
        read_prompts(tmp_path / "color_val.txt")
    (tmp_path / "color_val.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"color_val.txt: prompt file is empty"):
        read_prompts(tmp_path / "color_val.txt")
    (tmp_path / "shape_val.txt").write_text("a red circle\n\na blue square\n")
    assert read_prompts(tmp_path / "shape_val.txt") == ["a red circle", "a blue square"]


def test_unreadable_and_missized_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DataError, match=r"bad.png: unreadable image"):
        load_image(bad)
    with pytest.raises(DataError, match="image not found"):
        load_image(tmp_path / "nope.png")
    save_png(tmp_path / "ok.png", np.zeros((16, 16, 3), np.uint8))
    assert load_image(tmp_path / "ok.png", 16).shape == (16, 16, 3)
    with pytest.raises(DataError, match="expected 32x32"):
        load_image(tmp_path / "ok.png", 32)


def test_dataset_with_a_corrupt_image_names_it(tmp_path):
    save_png(tmp_path / "images/000000.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "images/000001.png").write_bytes(b"garbage")
    write_labels(tmp_path / "labels.jsonl", [{"file": f"images/00000{i}.png", "resolution": 8} for i in range(2)])
    with pytest.raises(DataError, match="000001.png: unreadable image"):
        load_dataset(tmp_path)


def test_bad_labels(tmp_path):
    (tmp_path / "labels.jsonl").write_text('{"file": "a.png"}\n{not json\n')
    with pytest.raises(DataError, match=r"labels.jsonl:2: not valid JSON"):
        read_labels(tmp_path / "labels.jsonl")
    (tmp_path / "labels.jsonl").write_text("")
    with pytest.raises(DataError, match="no labelled images"):
        read_labels(tmp_path / "labels.jsonl")


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text(json.dumps({"old": 1}))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"old": 1}
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model") as d:
            (d / "weights.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_clears_a_killed_writers_temp_dir(tmp_path):
    stale = tmp_path / ".out.abc123.tmp"
    stale.mkdir()
    (stale / "half_written.safetensors").write_bytes(b"x")
    keep = tmp_path / ".out10.abc.tmp"  # another output's temp dir is not touched
    keep.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (tmp_path / "out/done.txt").read_text() == "ok"
    assert not stale.exists() and keep.exists()
