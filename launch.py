"""Start the ControlNet demo suite, or generate headless.

    python launch.py --app canny              # one app on http://127.0.0.1:7860
    python launch.py --app all                # every app: ControlNet 1.0 and 1.1 tabs, multi, annotators
    python launch.py generate --app canny --image in.png --prompt "a house" --out outputs/
    python launch.py generate --app v11_inpaint --image in.png --mask mask.png --prompt "a cat" --out outputs/
    python launch.py generate --from-png outputs/photo_canny_seed5_0.png --image in.png --out again/
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_PORT = 7860
DEFAULT_MAX_QUEUE = 16
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def page_names() -> tuple[str, ...]:
    from apps.pages import PAGES

    return tuple(PAGES)


def apps_by_group(others: tuple[str, ...] = ()) -> str:
    """The app names, one line per group (ControlNet 1.0, ControlNet 1.1), then `others`."""
    from apps.registry import GROUPS

    lines = [f"  {group}: {', '.join(spec.name for spec in specs)}" for group, specs in GROUPS.items()]
    return "\n".join(lines + ([f"  other pages: {', '.join(others)}"] if others else []))


def model_options() -> argparse.ArgumentParser:
    """Options shared by the server and the `generate` command."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("model")
    group.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", default=None, help="float32 (default, the original's), float16 (GPU only), bfloat16, or auto: float16 on CUDA, "
                            "bfloat16 on CPUs with AVX512-BF16/AMX, float32 elsewhere (the status line says which)")
    group.add_argument("--low-memory", action="store_true",
                       help="keep only the working modules on the GPU and cache no ControlNet copies (the original's save_memory)")
    group.add_argument("--models-dir", type=Path, default=None,
                       help="where weight files are looked for before the Hugging Face cache (default: models/)")
    group.add_argument("--offline", action="store_true", help="never download; use local files and the Hugging Face cache only")
    group.add_argument("--base", default=None, metavar="FILE|FOLDER|REPO",
                       help="the SD 1.5 base: a single file (.safetensors/.ckpt, EMA or not; a missing VAE or text "
                            "encoder comes from the default SD 1.5 file) or a diffusers-format folder or hub repo id "
                            "(default: stable-diffusion-v1-5 v1-5-pruned-emaonly.safetensors)")
    group.add_argument("--vae", default=None, metavar="FILE|FOLDER|REPO",
                       help="replace the base's VAE (e.g. vae-ft-mse-840000-ema-pruned.safetensors, a diffusers VAE)")
    group.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                       help="an SD 1.5 LoRA file (kohya/A1111 or diffusers/PEFT), merged at SCALE (default 1); "
                            "repeatable. The pages also offer every file in models/lora/")
    group.add_argument("--tiny", action="store_true",
                       help="tiny random-weight model and random annotators, no files (for tests: outputs are noise)")
    return parser


def serve_parser(pages: tuple[str, ...]) -> argparse.ArgumentParser:
    default_app = "all" if os.environ.get("SPACE_ID") else "canny"
    from apps.registry import APPS

    parser = argparse.ArgumentParser(
        prog="launch.py", parents=[model_options()], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the ControlNet 1.0 and 1.1 demo apps in the browser. "
                    "Run 'python launch.py generate --help' for the headless command.",
        epilog="apps:\n" + apps_by_group(tuple(p for p in pages if p not in APPS) + ("all",)),
    )
    parser.add_argument("--app", default=default_app, choices=[*pages, "all"], metavar="APP",
                        help=f"the app to serve: {', '.join(pages)}, or all (tabs) (default: {default_app})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (default: 127.0.0.1 only)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"requests that may wait; more are refused with 'queue is full' (default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--outputs", type=Path, default=None, metavar="DIR",
                        help="also save every result (maps and images, with their settings in the PNG) in DIR")
    parser.add_argument("--test-hold-file", type=Path, default=None, metavar="PATH",
                        help="for tests only: a run waits after its first sampling step while PATH exists")
    return parser


def generate_parser() -> argparse.ArgumentParser:
    from apps.controls import (A_PROMPT, DEFAULT_SAMPLER, ETA, FAST_SCALE, FAST_STEPS, IMAGE_RESOLUTION, N_PROMPT,
                               NUM_SAMPLES, SAMPLER_CHOICES, SCALE, SEED, STEPS, STRENGTH)
    from apps.registry import APPS

    def ranged(param) -> str:
        return f"{param.label}, {param.minimum}-{param.maximum} (default {param.default})"

    apps = list(APPS)
    parser = argparse.ArgumentParser(
        prog="launch.py generate", parents=[model_options()], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate without a browser: writes the detected map and the images, prints their paths.",
        epilog="apps:\n" + apps_by_group(),
    )
    parser.add_argument("--app", choices=apps, metavar="APP", help="one of the apps listed below (required unless --from-png)")
    parser.add_argument("--image", required=True, type=Path, help="an input image, or a folder of them (batch)")
    parser.add_argument("--prompt", help="the prompt (required unless --from-png)")
    parser.add_argument("--from-png", type=Path, default=None, metavar="FILE",
                        help="take the app and every setting from a PNG made by this suite (its parameters chunk); "
                             "options given as well override them")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--n", type=int, default=NUM_SAMPLES.default, help=f"images per input: {ranged(NUM_SAMPLES)}")
    parser.add_argument("--steps", type=int, default=None, help=f"{ranged(STEPS)}; with --fast {ranged(FAST_STEPS)}")
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=[name for _, name in SAMPLER_CHOICES],
                        help=f"sampling method (default {DEFAULT_SAMPLER}, the original's)")
    parser.add_argument("--seed", type=int, default=SEED.default, help=f"{ranged(SEED)}; -1: random")
    parser.add_argument("--image-resolution", type=int, default=IMAGE_RESOLUTION.default, help=ranged(IMAGE_RESOLUTION))
    parser.add_argument("--strength", type=float, default=STRENGTH.default, help=ranged(STRENGTH))
    parser.add_argument("--scale", type=float, default=None, help=f"{ranged(SCALE)}; with --fast {ranged(FAST_SCALE)}")
    parser.add_argument("--eta", type=float, default=ETA.default, help=ranged(ETA))
    parser.add_argument("--guess-mode", action="store_true")
    parser.add_argument("--fast-decode", action="store_true", help="decode the images with TAESD (faster, a little softer)")
    parser.add_argument("--fast", action="store_true",
                        help="the Fast preset: LCM-LoRA merged, the LCM sampler, fewer steps, guidance 1")
    parser.add_argument("--a-prompt", default=A_PROMPT)
    parser.add_argument("--n-prompt", default=N_PROMPT)
    parser.add_argument("--weights", default=None, help="ControlNet weights key (default: the app's first, its fp16 file)")
    parser.add_argument("--preprocessor", default=None, metavar="NAME",
                        help="a 1.1 app's Preprocessor choice, e.g. SoftEdge_PIDI_safe or None (default: the app's first)")
    parser.add_argument("--mask", type=Path, default=None, help="v11_inpaint: the mask image (white = repaint)")
    parser.add_argument("--denoise", type=float, default=None, help="v11_tile: Denoising Strength, 0.1-1.0 (default 1.0)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="an app control, e.g. --param low_threshold=50 --param detect_resolution=384")
    return parser


def make_backend(args: argparse.Namespace, lora_folder: Path | None = None):
    """The shared model and the detectors, finding weights in --models-dir first, never downloading if --offline;
    the LoRA files offered: --lora ones (preselected) and those in `lora_folder`; the test hold (server only)."""
    from apps.backend import Backend, find_loras
    from apps.result_files import ResultFiles
    from apps.runs import RunLog, StepHold
    from cldm.shared_model import SharedModel
    from weights.files import WeightFiles

    files = WeightFiles(search_dirs=[args.models_dir] if args.models_dir else [], offline=True if args.offline else None)
    try:
        lora_files, chosen = find_loras(args.lora, lora_folder)
    except FileNotFoundError as err:
        raise SystemExit(f"launch.py: error: {err}") from None
    from cldm.bases import REPO_ID

    if args.tiny and (args.base or args.vae):
        raise SystemExit("launch.py: error: --base and --vae need real weights; --tiny uses random ones")
    for option, value in (("--base", args.base), ("--vae", args.vae)):
        if value and not Path(value).expanduser().exists() and not REPO_ID.match(value):
            raise SystemExit(f"launch.py: error: {option} {value}: no such file or folder, and not a hub repo id (owner/name)")
    shared = SharedModel(files=files, device=args.device, dtype=args.dtype, low_memory=args.low_memory, tiny=args.tiny,
                         base=args.base, vae=args.vae)
    hold = getattr(args, "test_hold_file", None)
    return Backend(shared, lora_files, chosen, ResultFiles(getattr(args, "outputs", None)),
                   RunLog(StepHold(hold) if hold else None))


def serve(args: argparse.Namespace) -> int:
    from apps.backend import LORA_DIR
    from apps.builder import CSS, MAX_UPLOAD, build_demo
    from apps.pages import PAGES

    if args.max_queue < 1:
        raise SystemExit("--max-queue must be at least 1")
    pages = list(PAGES.values()) if args.app == "all" else [PAGES[args.app]]
    demo = build_demo(pages, make_backend(args, LORA_DIR))
    demo.queue(max_size=args.max_queue, default_concurrency_limit=1)
    launch(demo, server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=args.share,
           ssr_mode=False, show_error=False, max_file_size=MAX_UPLOAD, css=CSS)
    return 0


LAUNCH_TRIES = 3


def launch(demo, **options) -> None:
    """`demo.launch(**options)`, started again when Gradio's start-up check of its own page fails. Gradio asks
    the new server for its page with a 3 s timeout and, at the first timeout, stops with "When localhost is not
    accessible, a shareable link must be created": a busy 2-core machine can take that long to answer the first
    request of the full suite's page. A real proxy problem still fails, after the last try."""
    for attempt in range(1, LAUNCH_TRIES + 1):
        try:
            demo.launch(**options)
            return
        except ValueError as err:
            if "localhost is not accessible" not in str(err) or attempt == LAUNCH_TRIES:
                raise
            demo.close()
            print(f"The server did not answer its own start-up check in time (try {attempt} of {LAUNCH_TRIES}); "
                  "starting it again.", flush=True)


def explicit_options(argv: list[str]) -> set[str]:
    """The `generate` options given on the command line (their argparse dests)."""
    parser = generate_parser()
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    return set(vars(parser.parse_known_args(argv)[0]))


def apply_png(args: argparse.Namespace, explicit: set[str]) -> str | None:
    """Fill the options not given explicitly from --from-png's settings; an error message, or None."""
    from apps.errors import InvalidInput
    from apps.image_settings import restore_app
    from apps.png_info import read_png_info
    from apps.registry import APPS

    try:
        info = read_png_info(args.from_png)
        if info.app not in APPS:
            return f"{args.from_png} was made with the {info.app} page; the command runs the single apps ({', '.join(APPS)})"
        if args.app is not None and args.app != info.app:
            return f"{args.from_png} was made with the {info.app} app, not {args.app}: leave out --app or use {info.app}"
        restored = restore_app(APPS[info.app], info, {})  # LoRAs come from --lora
    except InvalidInput as err:
        return f"--from-png {args.from_png}: {err}"
    request = restored.request
    v = request.values
    settings = {"app": info.app, "prompt": request.prompt, "a_prompt": request.a_prompt, "n_prompt": request.n_prompt,
                "n": v["num_samples"], "steps": v["ddim_steps"], "sampler": request.choices.sampler, "seed": v["seed"],
                "image_resolution": v["image_resolution"], "strength": v["strength"], "scale": v["scale"],
                "eta": v["eta"], "guess_mode": v.get("guess_mode", False), "fast": request.choices.fast,
                "fast_decode": request.choices.fast_decode, "weights": request.weights,
                "preprocessor": request.preprocessor.label if request.preprocessor else None}
    for dest, value in settings.items():
        if dest not in explicit:
            setattr(args, dest, value)
    given = {item.partition("=")[0] for item in args.param}
    spec = APPS[info.app]
    args.param = [f"{p.name}={v[p.name]}" for p in spec.primary + spec.extras if p.name not in given] + args.param
    if info.loras and "lora" not in explicit:
        print(f"launch.py generate: note: the PNG was made with LoRA(s) {', '.join(lora.name for lora in info.loras)} "
              "(scale " + ", ".join(f"{lora.weight:g}" for lora in info.loras) + "); give them with --lora FILE:SCALE",
              file=sys.stderr)
    return None


def generate(args: argparse.Namespace, explicit: set[str] | None = None) -> int:
    from dataclasses import replace

    from apps.controls import check_choices
    from apps.errors import USER_ERRORS, InvalidInput
    from apps.image_settings import app_info
    from apps.images import read_image
    from apps.png_info import save_png
    from apps.registry import APPS
    from apps.spec import run_app, validate

    if args.from_png is not None:
        problem = apply_png(args, explicit or set())
        if problem:
            return fail(problem)
    for option, value in (("--app", args.app), ("--prompt", args.prompt)):
        if value is None:
            return fail(f"{option} is required (or --from-png FILE)")
    spec = APPS[args.app]
    if args.image.is_dir():
        inputs = sorted(p for p in args.image.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not inputs:
            return fail(f"{args.image} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    elif args.image.is_file():
        inputs = [args.image]
    else:
        return fail(f"{args.image}: no such file or folder")
    from apps.controls import FAST_SCALE, FAST_STEPS, SCALE, STEPS

    steps, scale = (FAST_STEPS, FAST_SCALE) if args.fast else (STEPS, SCALE)
    args.steps = steps.default if args.steps is None else args.steps
    args.scale = scale.default if args.scale is None else args.scale
    values = {"num_samples": args.n, "image_resolution": args.image_resolution, "strength": args.strength,
              "guess_mode": args.guess_mode, "ddim_steps": args.steps, "scale": args.scale, "seed": args.seed,
              "eta": args.eta, **{p.name: p.default for p in spec.primary + spec.extras}}
    known = {p.name for p in spec.primary + spec.extras}
    if args.mask is not None and not spec.paint_mask:
        return fail(f"--mask is for the inpaint app (v11_inpaint), not {args.app}")
    if spec.paint_mask and args.mask is None:
        return fail("--mask FILE is required by v11_inpaint (white = repaint)")
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            return fail(f"--param {item!r}: expected NAME=VALUE with NAME one of: {', '.join(sorted(known)) or 'none for this app'}")
        values[name] = value.lower() in ("1", "true", "yes", "on") if isinstance(values[name], bool) else value
    if args.denoise is not None:
        if "denoise" not in known:
            return fail(f"--denoise is for the tile app (v11_tile), not {args.app}")
        values["denoise"] = args.denoise
    backend = make_backend(args)
    try:
        choices = replace(check_choices(args.sampler, args.fast, fast_decode=args.fast_decode), loras=tuple(
            (str(backend.lora_files[name]), scale) for name, scale in backend.preselected_loras))
        request = validate(spec, values, args.prompt, args.a_prompt, args.n_prompt, args.weights, choices,
                           args.preprocessor)
        images = [read_image(path) for path in inputs]
        mask = read_image(args.mask) if args.mask is not None else None
    except InvalidInput as err:
        return fail(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    for path, image in zip(inputs, images):
        try:
            result = run_app(spec, backend, app_input(spec, image, mask), request)
        except USER_ERRORS as err:
            return fail(str(err), code=1) if weight_problem(err) else fail(f"{path}: {err}")
        info = app_info(spec, backend, request, result.seed, result.samples[0].shape[:2], result.mode)
        written = []
        if result.display_map is not None:
            written.append(save_png(result.display_map, args.out / f"{path.stem}_{args.app}_{result.display_kind}.png",
                                    info))
        for i, sample in enumerate(result.samples):
            written.append(save_png(sample, args.out / f"{path.stem}_{args.app}_seed{result.seed}_{i}.png",
                                    replace(info, batch_pos=i)))
        for out in written:
            print(out)
    return 0


def app_input(spec, image, mask):
    """What the app's page would send for `image`: a drawing canvas value, an image with its mask, or the image."""
    from apps.images import MaskedUpload

    if spec.canvas:
        return {"layers": [], "composite": image}
    if spec.paint_mask:
        return MaskedUpload({"background": image, "layers": []}, mask)
    return image


def weight_problem(err: Exception) -> bool:
    """A weight file that is missing or broken (exit status 1), not the user's input (exit status 2)."""
    from annotator.weights import WeightFileError
    from cldm.checkpoint import CheckpointError
    from weights.files import WeightsUnavailable

    return isinstance(err, (CheckpointError, WeightsUnavailable, WeightFileError))


def fail(message: str, code: int = 2) -> int:
    """Exit status 2 for bad input (as argparse), 1 when the weights cannot be had."""
    print(f"launch.py generate: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    from cldm.allocator import limit_arenas, use_huge_pages

    use_huge_pages()  # before torch's first allocation
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["generate"]:
        return generate(generate_parser().parse_args(argv[1:]), explicit_options(argv[1:]))
    limit_arenas()  # before torch starts its threads: a server's memory stays flat over many requests
    return serve(serve_parser(page_names()).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
