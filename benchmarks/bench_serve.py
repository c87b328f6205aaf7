"""Load on ``gpoa serve``: several sessions at once, each with its own reference and targets, as the page
sends them (two requests in flight per session).

    python benchmarks/bench_serve.py                                   # 4 sessions x 5 targets, demo data
    python benchmarks/bench_serve.py --policy checkpoints/demo/best.pt --sessions 8 --targets 10

Starts ``gpoa serve`` on a free port of 127.0.0.1, and checks that no request fails and that every mask
the server returns equals ``GPOAPredictor.predict``'s for the same reference and target (session i's
reference is the i-th of the demo's reference and training pairs, so a mix-up between sessions shows).
Prints the server's start time (until it answers the page), the wall time of the load, the requests'
latencies, and the server's peak resident memory (VmHWM). Exit code 1 when anything failed.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def request(url: str, data: bytes = None, headers: dict = None) -> dict:
    """The JSON answer of one request (a PNG as bytes); an error status raises with the server's message."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}), timeout=600) as response:
            body = response.read()
            return body if response.headers["Content-Type"] == "image/png" else json.loads(body)
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{url}: {error.code} {error.read().decode(errors='replace')}") from None


def upload(url: str, path: Path) -> str:
    return request(f"{url}api/uploads", path.read_bytes(), {"X-File-Name": urllib.request.quote(path.name)})["id"]


def post(url: str, route: str, value: dict) -> dict:
    return request(f"{url}api/{route}", json.dumps(value).encode(), {"Content-Type": "application/json"})


def session(url: str, reference: tuple, targets: list, policy: bool) -> list:
    """One page's work: the reference, then its targets two at a time. [(target, mask, seconds)]"""
    reference_id = post(url, "references", {"images": [upload(url, reference[0])],
                                            "masks": [upload(url, reference[1])]})["reference"]

    def one(target: Path):
        start = time.perf_counter()
        result = post(url, "predictions", {"reference": reference_id, "target": upload(url, target),
                                           "policy": policy, "presence": False})
        mask = np.asarray(Image.open(io.BytesIO(request(url + result["mask"].lstrip("/"))))) > 0
        return target, mask, time.perf_counter() - start

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, targets))


def start_server(config: Path, policy, device: str):
    """``gpoa serve`` on a free port: (process, its address, seconds until it answered the page)."""
    start = time.perf_counter()
    command = [sys.executable, "-c", "import sys; from gpoa.cli import main; sys.exit(main(sys.argv[1:]))", "serve",
               "--config", str(config), "--port", "0", "--device", device] + (["--policy", str(policy)] if policy else [])
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"open (\S+) ", line)
    if not match:
        process.kill()
        raise SystemExit(f"gpoa serve did not start: {line!r}")
    url = match.group(1)
    urllib.request.urlopen(url, timeout=60).read()
    return process, url, time.perf_counter() - start


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--policy", type=Path, help="a policy file (default: none; the initial prompts' masks)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo" / "membrane",
                        help="a demo dataset folder (made in a temporary folder when missing)")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--targets", type=int, default=5, help="targets per session")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from gpoa import GPOAPredictor
    from gpoa.synth.demo import write_demo_dataset

    data = args.data
    if not (data / "reference_image").is_dir():
        data = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "membrane"
        write_demo_dataset(data.parent, seed=0, n_train=args.sessions, n_targets=args.sessions * args.targets,
                           families=["membrane"])
    pairs = [(data / "reference_image" / "reference.png", data / "reference_mask" / "reference.png")]
    pairs += [(p, data / "train_mask" / p.name) for p in sorted((data / "train_image").iterdir())]
    targets = sorted((data / "target_image").iterdir())
    if len(pairs) < args.sessions or len(targets) < args.sessions * args.targets:
        raise SystemExit(f"{data} has {len(pairs)} reference pairs and {len(targets)} targets; "
                         f"{args.sessions} sessions x {args.targets} targets need more")
    work = [(pairs[i], targets[i * args.targets:(i + 1) * args.targets]) for i in range(args.sessions)]

    process, url, start_s = start_server(args.config, args.policy, args.device)
    try:
        begin = time.perf_counter()
        with ThreadPoolExecutor(args.sessions) as pool:
            runs = [pool.submit(session, url, reference, chosen, args.policy is not None) for reference, chosen in work]
            outcomes = []
            for run in runs:
                try:
                    outcomes.append(run.result())
                except Exception as error:  # noqa: BLE001 - a failed session is reported, the others counted
                    outcomes.append(error)
        load_s = time.perf_counter() - begin
        peak = peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)

    failures, mismatches, latencies = [], 0, []
    predictor = GPOAPredictor.from_config(args.config, args.policy, device=args.device)  # models loaded once
    for (reference, _), outcome in zip(work, outcomes):
        if isinstance(outcome, Exception):
            failures.append(str(outcome))
            continue
        predictor.set_reference(*reference)
        for target, mask, seconds in outcome:
            latencies.append(seconds)
            mismatches += not np.array_equal(mask, predictor.predict(target).mask)
    done = len(latencies)
    print(f"sessions={args.sessions} targets_per_session={args.targets} policy={args.policy or 'none'}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print(f"start_s={start_s:.1f} load_s={load_s:.1f} done={done} failed_sessions={len(failures)} "
          f"masks_equal_to_predictor={done - mismatches}/{done} "
          + (f"latency_s median={statistics.median(latencies):.2f} max={max(latencies):.2f} " if latencies else "")
          + f"server_peak_rss_mb={peak:.0f}")
    return 1 if failures or mismatches or done != args.sessions * args.targets else 0


if __name__ == "__main__":
    sys.exit(main())
