"""FID on the evaluator's features, through clean-fid's folder pipeline."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from tsmflow.data.io import DataError, save_png
from tsmflow.evaluation.evaluator import render_scenes, train_evaluator, load_evaluator
from tsmflow.evaluation.fid import (FeatureExtractor, fid_from_stats, folder_features, folder_fid, folder_stats,
                                    load_stats, psd_sqrt, save_stats)

N = 160  # > the 96 feature dims, so the covariances are full rank


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # a briefly trained evaluator: its features already separate scenes from non-scenes
    out = tmp_path_factory.mktemp("ev") / "model"
    train_evaluator({"data": {"n": 400, "seed": 11},
                     "train": {"steps": 40, "batch_size": 32, "lr": 0.003, "seed": 0}}, 32, out)
    return load_evaluator(out)


def write_folder(path, images):
    for i, im in enumerate(images):
        save_png(path / f"{i:05d}.png", im)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    a, _ = render_scenes(N, 1, 32)
    b, _ = render_scenes(N, 2, 32)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, a.shape, dtype=np.uint8)
    blur = np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(2))) for x in b])
    return {k: write_folder(root / k, v) for k, v in
            {"a": a, "b": b, "noise": noise, "blur": blur}.items()}


@pytest.fixture(scope="module")
def stats(model, folders):
    return {k: folder_stats(model, p, batch_size=64) for k, p in folders.items()}


def test_fid_of_a_folder_with_itself_is_zero(stats):
    mu, sigma, n = stats["a"]
    assert n == N and mu.shape == (96,) and sigma.shape == (96, 96)
    assert abs(fid_from_stats(mu, sigma, mu, sigma)) < 1e-3 * np.trace(sigma)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # clean-fid's sqrtm of the singular product
@pytest.mark.parametrize("n", [40, 600])  # fewer samples than features: singular covariances
def test_fid_from_stats_matches_clean_fids_frechet_distance(n):
    from cleanfid.fid import frechet_distance
    rng = np.random.default_rng(n)
    d = 128
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    a = np.maximum(rng.normal(size=(n, d)) @ mix, 0)  # ReLU features: some units never fire
    a[:, :5] = 0
    b = rng.normal(0.3, 1.5, size=(n + 17, d)) @ mix
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ours = fid_from_stats(mu1, s1, mu2, s2)
    assert ours == pytest.approx(float(frechet_distance(mu1, s1, mu2, s2)), rel=1e-6)
    assert fid_from_stats(mu1, s1, mu2, s2, psd_sqrt(s2)) == ours
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_from_stats(mu1[:-1], s1[:-1, :-1], mu2, s2)


def test_fid_ranks_scenes_above_noise_and_blur(stats):
    fid = {k: fid_from_stats(*stats["a"][:2], *stats[k][:2]) for k in ("b", "noise", "blur")}
    # another sample of the same world is close; images that are not scenes are far
    assert fid["noise"] > 10 * fid["b"] and fid["blur"] > 3 * fid["b"]


def test_stats_round_trip_and_folder_fid(tmp_path, model, folders, stats):
    path = tmp_path / "ref" / "a.npz"
    save_stats(path, *stats["a"], feature_space="shapes")
    ref = load_stats(path)
    assert ref["n"] == N and ref["feature_space"] == "shapes"
    assert np.array_equal(ref["mu"], stats["a"][0]) and np.array_equal(ref["sigma"], stats["a"][1])
    assert [p.name for p in path.parent.iterdir()] == ["a.npz"]  # no temp files left
    fid = folder_fid(model, folders["a"], path, batch_size=64)
    assert fid == pytest.approx(0.0, abs=1e-3 * np.trace(ref["sigma"]))


def test_native_resolution_route_agrees(model, folders, stats):
    mu, sigma, _ = folder_stats(model, folders["a"], native=True)
    # skipping clean-fid's 299 round trip changes features only slightly
    assert fid_from_stats(mu, sigma, *stats["a"][:2]) < fid_from_stats(*stats["a"][:2], *stats["noise"][:2]) / 10


def test_extractor_takes_clean_fid_batches(model):
    x = torch.rand(3, 3, 299, 299) * 255
    assert FeatureExtractor(model)(x).shape == (3, 96)


def test_errors_name_the_problem(tmp_path, model):
    with pytest.raises(DataError, match="not found"):
        load_stats(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_text("not numpy")
    with pytest.raises(DataError, match="not an FID statistics file"):
        load_stats(tmp_path / "bad.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        folder_stats(model, tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        folder_stats(model, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown FID feature space"):
        folder_stats(model, tmp_path / "empty", feature_space="clip")
    with pytest.raises(ValueError, match="needs the evaluator"):
        folder_stats(None, tmp_path / "empty")


def test_patch_fid_features_every_quadrant_and_ranks_blur(model, folders, stats):
    x = torch.rand(3, 3, 299, 299) * 255
    assert FeatureExtractor(model, patches=True)(x).shape == (12, 96)
    p = {k: folder_stats(model, folders[k], batch_size=64, feature_space="patch") for k in ("a", "b", "blur")}
    assert p["a"][2] == 4 * N  # four patches per image
    assert fid_from_stats(*p["a"][:2], *p["blur"][:2]) > 3 * fid_from_stats(*p["a"][:2], *p["b"][:2])


def test_fid_record_counts_both_sides(tmp_path, model, folders, stats):
    from tsmflow.evaluation.run import fid_record
    ref = tmp_path / "a.npz"
    save_stats(ref, *stats["a"], feature_space="shapes")
    rec = fid_record(model, folders["noise"], ref, "shapes", validated=True)
    assert rec["n_samples"] == rec["n_reference"] == N and rec["feature_space"] == "shapes"
    assert rec["fid"] == pytest.approx(fid_from_stats(*stats["noise"][:2], *stats["a"][:2]), rel=1e-6)
    # a bootstrap SE over the samples: positive, well below the FID of noise against clean scenes
    assert 0 < rec["fid_se"] < rec["fid"] and rec["fid_n_boot"] == 200
    assert fid_record(model, folders["noise"], ref, "shapes", validated=True, n_boot=0)["fid_se"] is None


def test_precision_recall_of_same_far_and_collapsed_samples():
    from tsmflow.evaluation.fid import precision_recall
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    same = precision_recall(real, real)
    assert same["precision"] == same["recall"] == 1.0 and same["prc_neighborhood"] == 3
    far = precision_recall(real + 100.0, real)
    assert far["precision"] == far["recall"] == 0.0
    # samples collapsed onto one mode of the reference: precise, but they miss most of it
    collapsed = precision_recall(real[:1] + 0.01 * rng.normal(size=(200, 8)), real)
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.2
    with pytest.raises(DataError, match="precision/recall"):
        precision_recall(real[:3], real)


def test_fid_record_adds_precision_recall_where_reference_features_are_kept(tmp_path, model, folders, stats):
    from tsmflow.evaluation.fid import folder_features
    from tsmflow.evaluation.run import fid_record
    feats = folder_features(model, folders["a"]).astype(np.float64)
    ref = tmp_path / "a.npz"
    save_stats(ref, feats.mean(0), np.cov(feats, rowvar=False), len(feats), feature_space="shapes", features=feats)
    assert load_stats(ref)["features"].shape == feats.shape
    clean = fid_record(model, folders["b"], ref, "shapes", validated=True, n_boot=0)
    noise = fid_record(model, folders["noise"], ref, "shapes", validated=True, n_boot=0)
    assert clean["precision"] > noise["precision"] and clean["recall"] > noise["recall"]


def test_inception_features_load_from_the_configured_local_file_and_a_missing_one_names_the_key(tmp_path, folders):
    from conftest import save_inception_stand_in
    weights = save_inception_stand_in(tmp_path / "weights/my_inception.pt")  # any name: clean-fid wants its own
    other = save_inception_stand_in(tmp_path / "weights/other.pt", seed=1)
    feats = folder_features(None, folders["a"], num=8, feature_space="inception", inception_weights=weights)
    assert feats.shape == (8, 2048) and np.isfinite(feats).all() and feats.std(0).max() > 0
    # the configured file is the network that ran (clean-fid's cached or downloaded one never loads)
    assert np.array_equal(feats, folder_features(None, folders["a"], num=8, feature_space="inception",
                                                 inception_weights=weights))
    assert not np.allclose(feats, folder_features(None, folders["a"], num=8, feature_space="inception",
                                                  inception_weights=other))
    with pytest.raises(DataError, match=r"fid\.inception_weights"):
        folder_features(None, folders["a"], feature_space="inception", inception_weights=tmp_path / "absent.pt")


def test_quadrant_mosaic_resizes_each_quadrant_to_inceptions_size_by_clean_fids_resizer():
    from cleanfid.resize import make_resizer
    from tsmflow.evaluation.fid import INCEPTION_SIZE, quadrant_mosaic
    img = np.zeros((36, 40, 3), np.uint8)  # odd sizes, as COCO's are: quadrants of 18 x 20
    img[:18, :20], img[:18, 20:], img[18:, :20], img[18:, 20:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)
    img[2, 3] = (200, 100, 50)  # a detail of the first quadrant, kept at its resolution
    m = quadrant_mosaic(img)
    s = INCEPTION_SIZE
    assert m.shape == (2 * s, 2 * s, 3) and m.dtype == np.float32
    clean = make_resizer("PIL", False, "bicubic", (s, s))
    assert np.array_equal(m[:s, :s], clean(img[:18, :20]))
    for (i, j), colour in zip([(0, s), (s, 0), (s, s)], [(0, 255, 0), (0, 0, 255), (9, 9, 9)]):
        assert np.allclose(m[i:i + s, j:j + s], colour, atol=1e-3)


def test_patch_fid_on_inception_features_every_quadrant(tmp_path, folders):
    """Patch-FID at real scale: 4 Inception feature rows per image, each the network's reading of one quadrant."""
    from conftest import save_inception_stand_in
    weights = save_inception_stand_in(tmp_path / "inception.pt")
    whole = folder_features(None, folders["a"], num=8, feature_space="inception", inception_weights=weights)
    patches = folder_features(None, folders["a"], num=8, feature_space="inception_patch", inception_weights=weights)
    assert patches.shape == (32, 2048) and np.isfinite(patches).all()
    assert not np.allclose(patches[:8], whole) and not np.allclose(patches[:8], patches[8:16])
