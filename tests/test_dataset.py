import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cldm.dataset import COLOURS, DatasetError, Fill50KDataset, main, make_fill
from conftest import ROOT


def write_item(root, i, source, target, prompt):
    (root / "source").mkdir(exist_ok=True)
    (root / "target").mkdir(exist_ok=True)
    cv2.imwrite(str(root / "source" / f"{i}.png"), source)
    cv2.imwrite(str(root / "target" / f"{i}.png"), target)
    return json.dumps({"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": prompt})


def test_item_values_and_colour_order(tmp_path):
    source = np.zeros((16, 24, 3), np.uint8)
    source[..., 0] = 255  # BGR blue
    target = np.zeros((16, 24, 3), np.uint8)
    target[..., 2] = 255  # BGR red
    target[0, 0] = (0, 0, 0)
    (tmp_path / "prompt.json").write_text(write_item(tmp_path, 0, source, target, "a red image") + "\n")
    item = Fill50KDataset(tmp_path)[0]
    assert set(item) == {"jpg", "txt", "hint"}
    assert item["txt"] == "a red image"
    assert item["hint"].shape == item["jpg"].shape == (16, 24, 3)
    assert item["hint"].dtype == item["jpg"].dtype == np.float32
    np.testing.assert_array_equal(item["hint"][0, 0], [0.0, 0.0, 1.0])  # RGB: blue
    np.testing.assert_array_equal(item["jpg"][1, 1], [1.0, -1.0, -1.0])  # RGB: red, scaled to [-1, 1]
    np.testing.assert_array_equal(item["jpg"][0, 0], [-1.0, -1.0, -1.0])


def test_generator_is_seeded_and_matches_the_layout(tmp_path):
    a = make_fill(tmp_path / "a", n=6, size=64, seed=3)
    b = make_fill(tmp_path / "b", n=6, size=64, seed=3)
    c = make_fill(tmp_path / "c", n=6, size=64, seed=4)
    assert (a / "prompt.json").read_text() == (b / "prompt.json").read_text()
    assert (a / "prompt.json").read_text() != (c / "prompt.json").read_text()
    data = Fill50KDataset(a)
    assert len(data) == 6
    colour = "|".join(re.escape(name) for name in COLOURS)
    for i in range(len(data)):
        item = data[i]
        assert re.fullmatch(f"({colour}) circle with ({colour}) background", item["txt"])
        assert item["jpg"].shape == (64, 64, 3)
        hint = item["hint"]
        # Outline on black: mostly black, some white, white pixels grey-free in the channels (pure white line).
        assert 0.01 < (hint.max(axis=2) > 0.5).mean() < 0.3
        np.testing.assert_array_equal(hint[..., 0], hint[..., 1])
        # Target: exactly two dominant colours (background and circle).
        pixels = np.unique(item["jpg"].reshape(-1, 3), axis=0, return_counts=True)[1]
        assert np.sort(pixels)[-2:].sum() > 0.9 * 64 * 64
    np.testing.assert_array_equal(Fill50KDataset(b)[2]["jpg"], data[2]["jpg"])


def test_generator_cli(tmp_path, capsys):
    out = tmp_path / "fill"
    run = subprocess.run(
        [sys.executable, "-m", "cldm.dataset", "make-fill", "--out", str(out), "--n", "3", "--size", "32"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert len(Fill50KDataset(out)) == 3
    with pytest.raises(SystemExit):
        main(["make-fill", "--out", str(out), "--n", "3"])
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("size", [8, 60])
def test_generator_rejects_bad_sizes(tmp_path, size):
    with pytest.raises(ValueError, match="multiple of 8"):
        make_fill(tmp_path / "x", n=1, size=size)


def good_line(root):
    image = np.zeros((8, 8, 3), np.uint8)
    return write_item(root, 0, image, image, "p")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"source": "source/0.png", "prompt": "p"}', "line 2: missing field\\(s\\) target"),
        ('{"source": "source/0.png", "target": "target/0.png", "prompt": 3}', "line 2: field\\(s\\) prompt must be strings"),
        ('{"source": "source/9.png", "target": "target/0.png", "prompt": "p"}', "line 2: source file .*9.png not found"),
    ],
)
def test_bad_json_lines_name_the_line(tmp_path, bad_line, message):
    (tmp_path / "prompt.json").write_text(good_line(tmp_path) + "\n" + bad_line + "\n")
    with pytest.raises(DatasetError, match=message):
        Fill50KDataset(tmp_path)


def test_missing_folder_index_and_empty_index(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        Fill50KDataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="prompt.json not found"):
        Fill50KDataset(tmp_path)
    (tmp_path / "prompt.json").write_text("\n\n")
    with pytest.raises(DatasetError, match="no entries"):
        Fill50KDataset(tmp_path)


def test_unreadable_image_and_size_mismatch(tmp_path):
    lines = [good_line(tmp_path)]
    (tmp_path / "source" / "broken.png").write_bytes(b"not a png")
    lines.append(json.dumps({"source": "source/broken.png", "target": "target/0.png", "prompt": "p"}))
    lines.append(write_item(tmp_path, 2, np.zeros((8, 8, 3), np.uint8), np.zeros((16, 8, 3), np.uint8), "p"))
    (tmp_path / "prompt.json").write_text("\n".join(lines))
    data = Fill50KDataset(tmp_path)
    assert data[0]["txt"] == "p"
    with pytest.raises(DatasetError, match="broken.png is not a readable image"):
        data[1]
    with pytest.raises(DatasetError, match="item 2: source .* is 8x8 but target .* is 8x16"):
        data[2]
