"""Benchmark (not a CI test): does `python launch.py --app all` fit a free CPU Space (2 vCPU, 16 GB) with two
ControlNets cached? Real-size random weights, bfloat16 where the CPU computes it (`--dtype auto`, as app.py).

    python -m bench.space_memory [--work DIR] [--limit-gb 16] [--res 256]

1. Writes random weights of the real size in the official layouts under WORK/models, under the table's file
   names (`weights/table.py`): the SD 1.5 base (float32 safetensors, as v1-5-pruned-emaonly), the canny and
   scribble ControlNets (control-only, float16), the LCM-LoRA (rank 64 on every UNet block layer, kohya names)
   and TAESD. Done once, in a child process.
2. Starts `launch.py --app all --dtype auto --offline --models-dir WORK/models` under a memory limit, trying in
   turn `systemd-run --scope -p MemoryMax=…`, a cgroup v2 directory (memory.max), a cgroup v1 memory cgroup
   below this process's own (memory.limit_in_bytes), and `prlimit --as` (an address-space limit: the weakest,
   since mapped files count too); it says which one held.
3. Over gradio_client: canny with Fast (LCM-LoRA merged, 2 LCM steps: a TAESD preview after the first), then
   scribble (DDIM, 1 step), then canny again (a cached ControlNet: no file read), all at `--res`.
4. Reports the server's peak RSS (the kernel's VmHWM), RSS sampled every 50 ms per phase, the cgroup's peak
   charge (page cache included) when a cgroup held, /status after the runs, and whether it was killed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
GB = 1 << 30
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32"}


# ---- 1. weight files -----------------------------------------------------------------------------------------------


def save_safetensors(state: dict, path: Path) -> None:
    """A safetensors file written tensor by tensor (the library's save_file first copies every tensor)."""
    import torch

    header, offset = {}, 0
    for name, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[str(tensor.dtype).removeprefix("torch.")],
                        "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for tensor in state.values():
            f.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def save_weights(state: dict, path: Path) -> None:
    import torch

    if path.suffix == ".safetensors":
        save_safetensors(state, path)
    else:
        torch.save(state, path)


def prepare(models: Path) -> None:
    """Every file the two apps (and Fast) read, random, in the official layouts and the table's file names."""
    import torch

    from cldm.diffusers_names import unet_module_names
    from cldm.model import create_model
    from cldm.shared_model import CONFIG, randomize_
    from ldm.taesd import TAESD
    from weights.table import WEIGHTS

    models.mkdir(parents=True, exist_ok=True)
    model = create_model(CONFIG, init_weights=False)
    randomize_(model, seed=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    base = {k: v for k, v in state.items() if not k.startswith("control_model.")}
    base["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_weights(base, models / WEIGHTS["sd15"].basename)
    del base
    for k, key in enumerate(("cn10_canny", "cn10_scribble")):
        control = {name: (v * (1 + 0.01 * k)).half() if v.is_floating_point() else v
                   for name, v in state.items() if name.startswith("control_model.")}
        save_weights(control, models / WEIGHTS[key].basename)
    unet = model.model.diffusion_model
    gen, lora = torch.Generator().manual_seed(7), {}
    for diffusers, original in unet_module_names(model.config.unet).items():
        module = unet.get_submodule(original)
        if not diffusers.startswith(("down_blocks", "mid_block", "up_blocks")) or \
                not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        key, shape = "lora_unet_" + diffusers.replace(".", "_"), module.weight.shape
        lora[f"{key}.lora_down.weight"] = torch.randn(64, *shape[1:], generator=gen) / shape[1:].numel() ** 0.5
        lora[f"{key}.lora_up.weight"] = torch.randn(shape[0], 64, *([1] * (len(shape) - 2)), generator=gen) * 0.01
        lora[f"{key}.alpha"] = torch.tensor(64.0)
    save_weights(lora, models / WEIGHTS["lcm_lora"].basename)
    taesd = randomize_(TAESD(), 0)
    save_weights({k: v.contiguous() for k, v in taesd.decoder.state_dict().items()}, models / WEIGHTS["taesd"].basename)


# ---- 2. the memory limit ---------------------------------------------------------------------------------------------


class Limit:
    """How the server's memory is limited: `argv` prefix and/or a cgroup its process joins first."""

    def __init__(self, how: str, prefix: list[str], cgroup: Path | None = None, procs: str = "cgroup.procs",
                 peak_file: str | None = None, rlimit: int | None = None):
        self.how, self.prefix, self.cgroup, self.procs = how, prefix, cgroup, procs
        self.peak_file, self.rlimit = peak_file, rlimit

    def preexec(self) -> None:
        if self.cgroup is not None:
            (self.cgroup / self.procs).write_text(str(os.getpid()))
        if self.rlimit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.rlimit, self.rlimit))

    def peak(self) -> int | None:
        if self.cgroup is None or self.peak_file is None:
            return None
        try:
            return int((self.cgroup / self.peak_file).read_text())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        if self.cgroup is not None:
            for _ in range(20):
                try:
                    self.cgroup.rmdir()
                    return
                except OSError:
                    time.sleep(0.5)


def _own_cgroup(controller: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or (controller == "" and controllers == ""):
            return path
    return None


def choose_limit(limit: int) -> tuple[Limit, list[str]]:
    """The first limit that works here, and why the others did not."""
    tried = []
    probe = subprocess.run(["systemd-run", "--scope", "--quiet", "-p", f"MemoryMax={limit}", "true"],
                           capture_output=True, text=True) if shutil.which("systemd-run") else None
    if probe is not None and probe.returncode == 0:
        return Limit("systemd-run --scope -p MemoryMax", ["systemd-run", "--scope", "--quiet", "-p",
                                                           f"MemoryMax={limit}"]), tried
    tried.append("systemd-run: " + (probe.stderr.strip().splitlines()[0] if probe is not None and probe.stderr
                                    else "not installed"))
    for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        own = _own_cgroup("")
        controllers = mount / "cgroup.controllers"
        if own is None or not controllers.exists() or "memory" not in controllers.read_text().split():
            tried.append(f"cgroup v2 at {mount}: no memory controller")
            continue
        try:
            group = mount / own.lstrip("/") / f"space-bench-{os.getpid()}"
            group.mkdir()
            (group / "memory.max").write_text(str(limit))
            return Limit(f"cgroup v2 {group} memory.max", [], group, "cgroup.procs", "memory.peak"), tried
        except OSError as err:
            tried.append(f"cgroup v2 at {mount}: {err}")
    own = _own_cgroup("memory")
    if own is not None and Path("/sys/fs/cgroup/memory").is_dir():
        try:
            group = Path("/sys/fs/cgroup/memory") / own.lstrip("/") / f"space-bench-{os.getpid()}"
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(limit))
            (group / "memory.swappiness").write_text("0")
            return Limit(f"cgroup v1 {group} memory.limit_in_bytes", [], group, "cgroup.procs",
                         "memory.max_usage_in_bytes"), tried
        except OSError as err:
            tried.append(f"cgroup v1: {err}")
    else:
        tried.append("cgroup v1: no memory cgroup")
    return Limit("prlimit --as (address space)", [], rlimit=limit), tried


# ---- 3. the server and its requests -----------------------------------------------------------------------------------


def rss_parts(pid: int) -> dict[str, int]:
    """RssAnon (the process's own memory) and RssFile (mapped file pages, reclaimable when clean), bytes."""
    parts = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                parts[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return parts


class Sampler:
    """RSS (total, anonymous, file-backed) of the server every 50 ms, peaks per phase."""

    def __init__(self, pid: int):
        self.pid, self.phase, self.peaks = pid, "start", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            peaks = self.peaks.setdefault(self.phase, {})
            for key, value in rss_parts(self.pid).items():
                peaks[key] = max(peaks.get(key, 0), value)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.space_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "space-memory-bench")
    parser.add_argument("--limit-gb", type=float, default=16)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args(argv)
    models = args.work / "models"
    if not (models / ".complete").exists():
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", f"from bench.space_memory import prepare; from pathlib import Path; "
                                              f"prepare(Path({str(models)!r}))"], cwd=ROOT, check=True)
        (models / ".complete").write_text("")
        print(f"wrote random weights in {time.monotonic() - t0:.0f} s: " +
              ", ".join(f"{p.name} {p.stat().st_size / GB:.2f} GB" for p in sorted(models.iterdir()) if p.suffix))
    if args.prepare_only:
        return 0

    limit, tried = choose_limit(int(args.limit_gb * GB))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    log = args.work / "server.log"
    command = [*limit.prefix, sys.executable, "launch.py", "--app", "all", "--dtype", "auto", "--offline",
               "--models-dir", str(models), "--port", str(port)]
    result: dict = {"limit": limit.how, "limit_gb": args.limit_gb, "not_used": tried, "res": args.res}
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  preexec_fn=limit.preexec)
    target, sampler = server.pid, None
    try:
        from gradio_client import Client, handle_file

        from apps.registry import APPS
        from tests.apps_server import synthetic_image, write_png

        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}")
            try:
                client = Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        if limit.prefix:  # systemd-run: the server is its child
            children = psutil.Process(server.pid).children(recursive=True)
            target = children[0].pid if children else server.pid
        sampler = Sampler(target)
        result["idle_rss_gb"] = round(psutil.Process(target).memory_info().rss / GB, 2)
        image = write_png(args.work / "input.png", synthetic_image(args.res, args.res))
        runs = [("canny (Fast: LCM-LoRA, 2 LCM steps)", "canny", True, 2, 1.0),
                ("scribble (DDIM, 1 step)", "scribble", False, 1, 9.0),
                ("canny again (cached ControlNet)", "canny", True, 2, 1.0)]
        timings = {}
        for label, name, fast, steps, scale in runs:
            sampler.phase = label
            spec = APPS[name]
            values = {p.name: p.default for p in spec.controls} | {
                "num_samples": 1, "image_resolution": args.res, "ddim_steps": steps, "scale": scale, "seed": 1}
            t0 = time.monotonic()
            client.predict(handle_file(str(image)), "a house", *(values[p.name] for p in spec.controls),
                           "best quality", "lowres", spec.weights[0], fast, None, [], 1.0, False, api_name=f"/{name}")
            timings[label] = round(time.monotonic() - t0, 1)
        result["seconds"] = timings
        result["status"] = client.predict(api_name="/status")
        sampler.phase = "after"
        time.sleep(1)
        result["peak_rss_gb"] = round((vm_hwm(target) or 0) / GB, 2)
        result["final_rss_gb"] = {k: round(v / GB, 2) for k, v in rss_parts(target).items()}
    except Exception as err:  # noqa: BLE001 - the report says what happened
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        if sampler is not None:
            sampler.stop()
            result["sampled_peaks_gb"] = {phase: {k: round(v / GB, 2) for k, v in peaks.items()}
                                          for phase, peaks in sampler.peaks.items()}
        result["killed"] = server.poll() is not None  # it died before we stopped it (the limit's OOM kill)
        peak = limit.peak()
        if peak is not None:
            result["cgroup_peak_gb"] = round(peak / GB, 2)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        limit.cleanup()
    print(json.dumps(result, indent=2))
    if "error" in result:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
