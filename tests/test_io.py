"""Bad input fails clearly, naming the file; interrupted writes leave nothing behind."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

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


def test_prompt_files_are_utf8_whatever_the_locale(tmp_path):
    """T2I-CompBench's prompts have "piñata" and "café"; under a C locale without UTF-8 mode, Python's default
    text encoding is ASCII, so the file must be read as UTF-8 explicitly."""
    path = tmp_path / "shape_train.txt"
    path.write_bytes("a round piñata and a square café table\n".encode("utf-8"))
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8"}
    code = ("import locale, sys; from tsmflow.data.io import read_prompts, write_lines; "
            "assert locale.getpreferredencoding(False).lower() in ('ascii', 'ansi_x3.4-1968'), "
            "locale.getpreferredencoding(False); p = read_prompts(sys.argv[1]); "
            "write_lines(sys.argv[1] + '.out', p); print(p[0])")
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                       encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "a round piñata and a square café table"
    assert (tmp_path / "shape_train.txt.out").read_bytes() == path.read_bytes()
    path.write_bytes("a caf\xe9 table\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"shape_train.txt: not UTF-8 text"):
        read_prompts(path)


def test_odd_images_load_as_8bit_rgb(tmp_path):
    """16-bit grayscale, CMYK, palette and RGBA files load as the 8-bit RGB they show."""
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    got = load_image(tmp_path / "gray16.png")
    assert got.dtype == np.uint8 and got.shape == (32, 32, 3)
    assert np.abs(got[..., 0].astype(int) - np.rint(ramp / 257.0)).max() == 0  # PIL's own convert clips at 255
    assert (got == 255).mean() < 0.01
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(load_image(tmp_path / "cmyk.jpg")[4, 4].astype(int) - [255, 0, 0]).max() <= 2
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 0, 200] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    Image.new("RGBA", (8, 8), (0, 200, 0, 128)).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "palette.png")[0, 0].tolist() == [0, 0, 200]
    assert load_image(tmp_path / "rgba.png")[0, 0].tolist() == [0, 200, 0]


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # the file is now over twice the limit
    with pytest.raises(DataError, match=r"huge.png: unreadable image \(DecompressionBombError"):
        load_image(tmp_path / "huge.png")


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
