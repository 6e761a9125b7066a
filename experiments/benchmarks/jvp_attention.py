"""Time and peak memory of attention's JVP: blockwise / Triton paths against naive torch.func.jvp.

Methods (all compute the attention output O and its tangent Ȯ for random q, k, v and tangents):

* ``naive``: ``torch.func.jvp`` of explicit softmax attention (N × N matrices; the peer).
* ``blockwise``: ``torch.func.jvp`` of ``flowrl.kernels.jvp_attention(backend="reference")``,
  i.e. what a model gets on a CPU: the primal forward plus the fused O/Ȯ pass, in blocks.
* ``blockwise_fused``: ``attention_with_tangent(backend="reference")``, the fused pass alone.
* ``triton`` / ``triton_fused``: the same two through the Triton kernel (CUDA only).

On a CPU every (method, N) runs in a fresh subprocess; peak memory is the rise of the
process's peak resident set size (VmHWM, reset through /proc/self/clear_refs) above its
resident size just before the call, inputs already allocated. On CUDA it is
``torch.cuda.max_memory_allocated`` above the allocation before the call.

Run from the repository root::

    .venv/bin/python experiments/benchmarks/jvp_attention.py           # N = 256, 1024, 4096
    .venv/bin/python experiments/benchmarks/jvp_attention.py --quick   # smoke run, seconds

Writes ``experiments/benchmarks/results/jvp_attention.json`` (``--out``) and a markdown table
next to it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import code_version, machine_info, write_results

from flowrl.kernels import attention_with_tangent, jvp_attention
from flowrl.kernels.reference import explicit_attention

CPU_METHODS = ("naive", "blockwise", "blockwise_fused")
CUDA_METHODS = (*CPU_METHODS, "triton", "triton_fused")
PEER = "naive"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096], help="tokens N")
    parser.add_argument("--head-dim", type=int, default=64, help="head dim D")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per (method, N)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", help="subset of the methods to run")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("experiments/benchmarks/results/jvp_attention.json"),
        help="JSON output; the markdown table goes next to it with the suffix .md",
    )
    parser.add_argument("--quick", action="store_true", help="N = 64, 128 and 1 repeat")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats = [64, 128], 1
    available = CUDA_METHODS if args.device.startswith("cuda") else CPU_METHODS
    args.methods = args.methods or list(available)
    unknown = set(args.methods) - set(available)
    if unknown:
        parser.error(f"methods {sorted(unknown)} are not available on {args.device}")
    if min(args.n) < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    return args


def make_inputs(args: argparse.Namespace, n: int) -> list[torch.Tensor]:
    """q, k, v and their tangents, (B, H, N, D) each."""
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, n, args.head_dim)
    dtype = getattr(torch, args.dtype)
    return [torch.randn(shape, generator=gen).to(args.device, dtype) for _ in range(6)]


def method_fn(method: str, inputs: list[torch.Tensor]) -> Any:
    """A no-argument callable returning (O, Ȯ) by ``method``."""
    q, k, v, tq, tk, tv = inputs
    if method == "naive":
        return lambda: torch.func.jvp(explicit_attention, (q, k, v), (tq, tk, tv))
    backend = "reference" if method.startswith("blockwise") else "triton"
    if method.endswith("_fused"):
        return lambda: attention_with_tangent(q, k, v, tq, tk, tv, backend=backend)[:2]
    return lambda: torch.func.jvp(
        lambda a, b, c: jvp_attention(a, b, c, backend=backend), (q, k, v), (tq, tk, tv)
    )


def _rss_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace, method: str, n: int) -> dict[str, Any]:
    """Measure one (method, N) in this process; returns times and the peak memory."""
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    method_fn(method, make_inputs(args, min(n, 64)))()  # warm-up: lazy imports, compilation
    inputs = make_inputs(args, n)
    fn = method_fn(method, inputs)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        how = "torch.cuda.max_memory_allocated rise"
    else:
        exact = _reset_peak_rss()
        before = _rss_bytes("VmRSS")
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        fn()
        if exact:
            peak, how = _rss_bytes("VmHWM") - before, "VmHWM rise (clear_refs reset)"
        else:  # the process-lifetime peak: an upper bound
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - maxrss_before
            how = "ru_maxrss rise"
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"method": method, "n": n, "times_s": times, "peak_bytes": peak, "memory": how}


def run_isolated(args: argparse.Namespace, method: str, n: int) -> dict[str, Any]:
    """Run :func:`worker` in a fresh interpreter so peaks of other cases cannot mask it."""
    cmd = [sys.executable, __file__, "--worker", method, str(n)]
    cmd += ["--head-dim", str(args.head_dim), "--batch", str(args.batch)]
    cmd += ["--heads", str(args.heads), "--dtype", args.dtype, "--repeats", str(args.repeats)]
    cmd += ["--threads", str(args.threads), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} at N={n} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"JVP of attention (O and Ȯ) on {s['device']}: B = {s['batch']}, H = {s['heads']}, "
        f"D = {s['head_dim']}, {s['dtype']}, torch threads {s['threads']}; median of "
        f"{s['repeats']} calls; peak memory above the inputs.",
        "",
        "| N | method | time (ms) | peak memory (MiB) | time / naive | memory / naive |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['n']} | {row['method']} | {1e3 * row['time_s']:.1f} | "
            f"{row['peak_bytes'] / 2**20:.1f} | {row['time_vs_naive']:.2f} | "
            f"{row['memory_vs_naive']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args, args.worker[0], int(args.worker[1]))))
        return {}
    rows = []
    for n in args.n:
        by_method = {}
        for method in args.methods:
            print(f"N = {n:5d} {method:16s}", end=" ", flush=True)
            record = run_isolated(args, method, n)
            record["time_s"] = statistics.median(record["times_s"])
            by_method[method] = record
            print(f"{1e3 * record['time_s']:9.1f} ms  {record['peak_bytes'] / 2**20:9.1f} MiB")
        peer = by_method.get(PEER)
        for record in by_method.values():
            record["time_vs_naive"] = record["time_s"] / peer["time_s"] if peer else float("nan")
            record["memory_vs_naive"] = (
                record["peak_bytes"] / peer["peak_bytes"] if peer else float("nan")
            )
            rows.append(record)
    result = {
        "what": "time and peak memory of computing attention's output and its tangent (JVP)",
        "machine": {**machine_info(("triton",)), "torch_threads": args.threads},
        "code": code_version(("flowrl", "kernels")),
        "settings": {
            "device": args.device,
            "batch": args.batch,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "dtype": args.dtype,
            "repeats": args.repeats,
            "threads": args.threads,
            "n": args.n,
            "methods": args.methods,
            "peer": PEER,
        },
        "rows": rows,
        "command": " ".join([Path(sys.executable).name, *(argv or sys.argv)]),
    }
    table = markdown(result)
    write_results(result, table, args.out)
    print()
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
