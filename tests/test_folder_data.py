"""Your own images: ImageFolder trees and CSVs become a uint8 cache; bad input gets one error line before any job."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_workflow import load_config, snakemake

from limit import data as D
from limit.cli import main


def save(path, array, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def grey_tree(root, classes=("a", "b"), per_class=3, side=28, seed=0):
    rng = np.random.default_rng(seed)
    for cls in classes:
        for i in range(per_class):
            save(root / cls / f"{i}.png", rng.integers(0, 256, (side, side), dtype=np.uint8), "L")
    return root


def test_imagefolder_cache_holds_the_exact_pixels_in_sorted_class_order(tmp_path):
    root = grey_tree(tmp_path / "tree", classes=("dog", "cat"))
    test_root = grey_tree(tmp_path / "test", classes=("cat",), per_class=2, seed=1)
    cache = tmp_path / "cache"
    assert main(["import-images", str(root), "--test", str(test_root), "--out", str(cache)]) == 0
    info = D.dataset_info(str(cache))
    assert (info.num_classes, info.channels, info.size) == (2, 1, 28)
    arrays = D.load_arrays(str(cache), "unused")
    assert arrays.train_x.shape == (6, 1, 28, 28) and arrays.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(arrays.train_x[0, 0].numpy(), np.asarray(Image.open(root / "cat" / "0.png")))
    assert arrays.test_x.shape == (2, 1, 28, 28) and arrays.test_y.tolist() == [0, 0]
    pixels = arrays.train_x.float() / 255
    mean, std = D.normalisation(str(cache))
    assert mean.flatten().tolist() == pytest.approx([pixels.mean().item()], rel=1e-5)
    assert std.flatten().tolist() == pytest.approx([pixels.std(unbiased=False).item()], rel=1e-4)


def test_csv_source_with_resize_rgb_and_given_normalisation(tmp_path):
    rng = np.random.default_rng(2)
    rows = ["path,label"]
    for i, (label, side) in enumerate([("ship", 40), ("plane", 36), ("ship", 50)]):
        save(tmp_path / "img" / f"{i}.jpg", rng.integers(0, 256, (side, side + 4, 3), dtype=np.uint8), "RGB")
        rows.append(f"img/{i}.jpg,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    assert main(["import-images", str(tmp_path / "labels.csv"), "--size", "32", "--mean", "0.5", "0.5", "0.5",
                 "--std", "0.25", "0.25", "0.25", "--out", str(cache)]) == 0
    info = json.loads((cache / "dataset.json").read_text())
    assert info["classes"] == ["plane", "ship"] and info["channels"] == 3 and info["size"] == 32
    assert info["mean"] == [0.5] * 3 and info["std"] == [0.25] * 3
    arrays = D.load_arrays(str(cache), "unused")
    assert arrays.train_x.shape == (3, 3, 32, 32) and arrays.train_y.tolist() == [1, 0, 1]
    assert arrays.test_x.shape == (0, 3, 32, 32)


def bad_unreadable(tmp_path):
    root = grey_tree(tmp_path / "tree")
    (root / "a" / "broken.png").write_bytes(b"this is not a png")
    return [str(root)], "broken.png: unreadable image"


def bad_empty_class(tmp_path):
    root = grey_tree(tmp_path / "tree")
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no images here")
    return [str(root)], "/c: class folder has no images"


def bad_label(tmp_path):
    grey_tree(tmp_path / "tree")
    (tmp_path / "labels.csv").write_text("path,label\ntree/a/0.png,a\ntree/b/0.png,zebra\n")
    return [str(tmp_path / "labels.csv"), "--classes", "a", "b"], "line 3: label 'zebra' is not in the class list"


def bad_folder_label(tmp_path):
    return [str(grey_tree(tmp_path / "tree")), "--classes", "a"], "label 'b' is not in the class list"


def bad_sizes(tmp_path):
    root = grey_tree(tmp_path / "tree")
    save(root / "b" / "big.png", np.zeros((32, 32), dtype=np.uint8), "L")
    return [str(root)], "mixed image sizes without a resize"


@pytest.mark.parametrize("bad", [bad_unreadable, bad_empty_class, bad_label, bad_folder_label, bad_sizes])
def test_bad_sources_give_one_error_line_and_no_cache(tmp_path, capsys, bad):
    args, message = bad(tmp_path)
    assert main(["import-images", *args, "--out", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cache").exists()


def test_an_image_size_the_architecture_cannot_take_is_refused(tmp_path, capsys):
    cache, labels = tmp_path / "cache", tmp_path / "labels.npz"
    main(["import-images", str(grey_tree(tmp_path / "tree", side=64)), "--out", str(cache)])
    main(["corrupt", "--dataset", str(cache), "--noise", "given", "--rate", "0", "--seed", "1", "--out", str(labels)])
    assert main(["train", "--dataset", str(cache), "--labels", str(labels), "--method", "ce", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-tracking"]) == 2
    assert "architecture 'cnn' needs images of 28 to 35 pixels, not 64" in capsys.readouterr().err


def own_config(tmp_path, source):
    config = load_config("config/test.yaml")
    config["image_datasets"] = {"shapes": {"source": str(source)}}
    config["training"]["shapes"] = dict(config["training"]["fashion_mnist"], val_size=2)
    config["experiments"] = {"own": {"datasets": ["shapes"], "noise": ["given"], "rates": [0.0], "n": ["all"],
                                     "seeds": [1], "label_issues": True,
                                     "methods": {"ce": {}, "limit_l": {"beta": [1]}}}}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.pipeline
def test_a_dry_run_plans_import_training_and_label_issues_for_own_images_and_writes_nothing(tmp_path):
    result = snakemake(tmp_path / "work", "-n", configfile=str(own_config(tmp_path, grey_tree(tmp_path / "tree"))))
    assert result.returncode == 0, result.stderr[-3000:]
    # parsing the config checks every image, and writes nothing: no results directory (Snakemake's own .snakemake)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [".snakemake"]
    for rule in ("import_images", "corrupt_labels", "train", "find_label_issues"):
        assert f"rule {rule}:" in result.stdout or f"localrule {rule}:" in result.stdout, rule
    assert "results/label_issues/own/shapes/given-0/nall/seed1/limit_l/label_issues.csv" in result.stdout
    assert "--dataset results/data/shapes" in result.stdout or "results/data/shapes/dataset.json" in result.stdout


@pytest.mark.pipeline
def test_workflow_refuses_bad_images_before_any_job(tmp_path):
    root = grey_tree(tmp_path / "tree")
    (root / "c").mkdir()
    result = snakemake(tmp_path / "work", "--cores", "1", configfile=str(own_config(tmp_path, root)))
    assert result.returncode != 0
    assert "image_datasets.shapes:" in result.stdout + result.stderr and "class folder has no images" in result.stderr
    assert not (tmp_path / "work" / "results").exists()


@pytest.mark.pipeline
def test_the_documented_own_images_route_runs_to_its_report_under_the_datasets_name(tmp_path):
    work = tmp_path / "work"
    result = snakemake(work, "--cores", "2", configfile=str(own_config(tmp_path, grey_tree(tmp_path / "tree"))))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = pd.read_csv(work / "results/runs.csv")
    assert set(runs.dataset) == {"shapes"}  # the name, not the cache's path
    assert all(run_id.startswith("own/shapes/given-0/nall/seed1/") for run_id in runs.run_id)
    assert (work / "results/tables/shapes_given.md").exists()
    assert (work / "results/label_issues/own/shapes/given-0/nall/seed1/limit_l/label_issues.csv").exists()


def test_parsing_a_config_after_the_import_reads_no_image_header_of_an_unchanged_source(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from limit.runs.grid import check_image_datasets
    root = grey_tree(tmp_path / "tree")
    config = {"results": str(tmp_path / "results"), "image_datasets": {"shapes": {"source": str(root)}}}
    opened = []
    real_open = PILImage.open
    monkeypatch.setattr(PILImage, "open", lambda path, *a, **k: (opened.append(path), real_open(path, *a, **k))[1])
    assert check_image_datasets(config) == {"shapes": (2, 28, (4, 2, None))} and len(opened) == 6
    assert not (tmp_path / "results").exists()  # parsing writes nothing
    assert main(["import-images", str(root), "--out", str(tmp_path / "results/data/shapes")]) == 0  # the rule's job
    assert len(opened) == 18  # the import's check and its decoding
    assert check_image_datasets(config) == {"shapes": (2, 28, (4, 2, None))} and len(opened) == 18  # remembered
    save(root / "b" / "3.png", np.zeros((30, 30), dtype=np.uint8), "L")  # a new image of another size
    with pytest.raises(ValueError, match="mixed image sizes"):
        check_image_datasets(config)
    assert len(opened) == 25
