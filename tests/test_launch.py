"""launch.py: the command line (serve options, app names) and the headless `generate` command."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

import launch
from apps.pages import PAGES
from tests.apps_server import ROOT, bad_inputs, server_env, synthetic_image, write_png

FAST = ["--tiny", "--steps", "1", "--image-resolution", "256", "--seed", "5"]


def generate(*args: str) -> int:
    return launch.main(["generate", *args])


@pytest.fixture()
def image(tmp_path):
    return write_png(tmp_path / "in" / "photo.png", synthetic_image(256, 320))


def sizes(paths) -> list[tuple[int, int]]:
    return [PIL.Image.open(p).size[::-1] for p in paths]


def test_help_lists_every_app(capsys):
    with pytest.raises(SystemExit) as done:
        launch.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in PAGES) and "all" in text and "generate" in text


def test_serve_defaults(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    args = launch.serve_parser(PAGES).parse_args([])
    assert (args.app, args.listen, args.share, args.tiny) == ("canny", False, False, False)
    monkeypatch.setenv("SPACE_ID", "someone/controlnet")
    assert launch.serve_parser(PAGES).parse_args([]).app == "all"


def test_unknown_app_is_refused(capsys):
    with pytest.raises(SystemExit) as done:
        launch.main(["--app", "nothing"])
    assert done.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_generate_writes_map_and_images(image, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate("--app", "canny", "--image", str(image), "--prompt", "a house", "--out", str(out), "--n", "2", *FAST) == 0
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in printed] == ["photo_canny_map.png", "photo_canny_seed5_0.png", "photo_canny_seed5_1.png"]
    assert sizes(printed) == [(256, 320)] * 3
    shown = np.asarray(PIL.Image.open(printed[0]))
    assert shown.mean() > 127  # the canny map is shown inverted: black edges on white


def test_generate_batch_folder_and_params(image, tmp_path, capsys):
    write_png(image.parent / "second.png", synthetic_image(320, 256))
    out = tmp_path / "out"
    rc = generate("--app", "hed", "--image", str(image.parent), "--prompt", "x", "--out", str(out),
                  "--param", "detect_resolution=128", *FAST)
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and sizes(printed) == [(256, 320), (256, 320), (320, 256), (320, 256)]


def test_generate_canvas_app_takes_a_drawing(tmp_path, capsys):
    drawing = np.full((256, 256, 3), 255, np.uint8)
    drawing[120:130, 20:230] = 0
    path = write_png(tmp_path / "drawing.png", drawing)
    assert generate("--app", "scribble_interactive", "--image", str(path), "--prompt", "x", "--out", str(tmp_path / "o"), *FAST) == 0
    map_path = capsys.readouterr().out.split()[0]
    shown = np.asarray(PIL.Image.open(map_path))
    assert (shown[125, 100] == 0).all() and (shown[50, 100] == 255).all()  # the stroke, shown black on white


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "Steps"),
    (["--n", "13"], "Images"),
    (["--param", "bogus=1"], "expected NAME=VALUE"),
    (["--param", "low_threshold=0"], "Canny low threshold"),
    (["--weights", "cn10_seg"], "ControlNet weights"),
])
def test_generate_bad_values(image, tmp_path, capsys, args, message):
    rc = generate("--app", "canny", "--image", str(image), "--prompt", "x", "--out", str(tmp_path / "o"), "--tiny", *args)
    assert rc == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("kind,message", [("corrupt", "Could not read"), ("too large", "at most 4096"), ("16-bit", "only 8-bit")])
def test_generate_bad_images(tmp_path, capsys, kind, message):
    bad = bad_inputs(tmp_path / "bad")[kind]
    assert generate("--app", "canny", "--image", str(bad), "--prompt", "x", "--out", str(tmp_path / "o"), *FAST) == 2
    assert message in capsys.readouterr().err


def test_generate_missing_input(tmp_path, capsys):
    assert generate("--app", "canny", "--image", str(tmp_path / "nope.png"), "--prompt", "x", "--out", str(tmp_path)) == 2
    assert "no such file" in capsys.readouterr().err


def test_generate_missing_weights_says_what_to_download(image, tmp_path, capsys):
    rc = generate("--app", "canny", "--image", str(image), "--prompt", "x", "--out", str(tmp_path / "o"),
                  "--offline", "--models-dir", str(tmp_path), "--steps", "1", "--image-resolution", "256")
    assert rc == 1
    err = capsys.readouterr().err
    assert "v1-5-pruned-emaonly.safetensors" in err and "stable-diffusion-v1-5" in err


def test_generate_entry_point(image, tmp_path):
    done = subprocess.run([sys.executable, "launch.py", "generate", "--app", "scribble", "--image", str(image),
                           "--prompt", "x", "--out", str(tmp_path / "o"), *FAST],
                          cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 2
    bad = subprocess.run([sys.executable, "launch.py", "generate", "--app", "nothing", "--image", str(image),
                          "--prompt", "x", "--out", str(tmp_path)], cwd=ROOT, env=server_env(), capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_launch_starts_again_when_gradios_self_check_times_out(monkeypatch):
    """Gradio stops at its first timed-out request to its own page ("localhost is not accessible"); `launch`
    closes that server and starts it again. A check that keeps failing still fails, after the last try."""
    import urllib.request

    import gradio as gr
    from gradio import networking

    from tests.apps_server import free_port

    answers = iter([False, True])
    monkeypatch.setattr(networking, "url_ok", lambda url: next(answers))
    with gr.Blocks() as demo:
        gr.Markdown("hello")
    port = free_port()
    try:
        launch.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
    finally:
        demo.close()

    calls = []
    monkeypatch.setattr(networking, "url_ok", lambda url: calls.append(url) and False)
    with pytest.raises(ValueError, match="localhost is not accessible"):
        launch.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    demo.close()
    assert len(calls) == launch.LAUNCH_TRIES
