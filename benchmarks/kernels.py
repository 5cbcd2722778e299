"""Speed of the CPU kernels against PyTorch fp32 (and int8, torch.sparse) in the same run.

    python benchmarks/kernels.py            # full run (about a minute on 2 idle cores)
    python benchmarks/kernels.py --quick    # fewer repeats (< 1 min)
    python benchmarks/kernels.py --parts sparse,tt --keep   # some parts, others kept

Every comparison times the kernel and its anchor interleaved (kernel, anchor, kernel, ...) and
takes medians, so a busy machine slows both alike; speeds are ratios to the anchor. Runs on 1 and
2 threads (PyTorch and Numba set alike). Writes ``benchmarks/results/kernels.json`` and the
``kernels`` section of BENCHMARKS.md (``--quick``: ``kernels-quick.json``, BENCHMARKS.md left
alone). Parts: ``binary``, ``bitserial``, ``sparse``, ``tt``, ``e2e``.
"""

from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch
from _common import BenchContext, Part, PartResult, check, markdown_table, run_parts
from torch import nn

from modelzip.core.timing import time_interleaved, time_named
from modelzip.kernels import materialize
from modelzip.kernels._jit import popcount
from modelzip.kernels._native import native, selected_isa
from modelzip.kernels.binary import _native_for, bwn_gemm, xnor_gemm, xnor_gemm_numba
from modelzip.kernels.bitpack import pack_planes, pack_signs
from modelzip.kernels.bitserial import bitserial_gemm_packed, plane_weights
from modelzip.kernels.factorized import tt_macs, tt_matmul
from modelzip.kernels.sparse import BSRMatrix, CSRMatrix, bsr_matmul, bsr_matmul_numba, csr_matmul

ROWS: list[dict[str, Any]] = []
CHECKS: list[dict[str, Any]] = []


CPU_TIMES: dict[str, float] = {}
#: Which implementation the XNOR and BSR rows time (the Numba one is timed beside it).
KERNEL = {"avx512": "AVX-512", "avx2": "AVX2"}.get(str(selected_isa()), "Numba")
KERNEL = KERNEL if native() is not None else "Numba"
#: Issue #20: the binary GEMM against fp32, by instruction set: 10× with AVX-512 (``vpopcntq``),
#: 6× on AVX2 (no vector popcount: scalar ``popcnt`` or a nibble lookup).
BINARY_TARGET = {"avx512": 10.0, "avx2": 6.0}


def binary_target() -> tuple[float, str]:
    """The binary GEMM's target on this CPU and its label (AVX2 where no AVX-512 build runs)."""
    isa = "avx512" if selected_isa() == "avx512" else "avx2"
    return BINARY_TARGET[isa], {"avx512": "AVX-512", "avx2": "AVX2"}[isa]


def interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median wall seconds of each function, the calls interleaved; one warm-up call each,
    left out. The median process CPU seconds go to ``CPU_TIMES`` (robust to time-slicing on a
    shared machine, which wall time is not)."""
    timings = time_named(fns, reps=reps, warmup=1, grad="enabled", cpu_clock=time.process_time)
    CPU_TIMES.clear()
    CPU_TIMES.update({k: t.cpu for k, t in timings.items() if t.cpu is not None})
    return {k: t.median for k, t in timings.items()}


def row(
    group: str,
    name: str,
    threads: int,
    seconds: float,
    ops: float,
    anchor: str,
    anchor_seconds: float,
    key: str = "",
    anchor_key: str = "",
    **extra: Any,
) -> dict[str, Any]:
    r = {
        "group": group,
        "name": name,
        "threads": threads,
        "ms": round(seconds * 1e3, 3),
        "gops": round(ops / seconds / 1e9, 1) if ops else None,
        "anchor": anchor,
        "speedup": round(anchor_seconds / seconds, 2),
        **extra,
    }
    if key in CPU_TIMES and anchor_key in CPU_TIMES and CPU_TIMES[key] > 0:
        r["cpu_speedup"] = round(CPU_TIMES[anchor_key] / CPU_TIMES[key], 2)
    ROWS.append(r)
    return r


@numba.njit(cache=True, fastmath=True)
def _popcount_stream(words, reps):
    # XOR + popcount + add over L1-resident words: the vector-popcount limit of one core.
    acc = 0
    for r in range(reps):
        x = np.uint64(r)
        for w in range(words.shape[0]):
            acc += np.int64(popcount(words[w] ^ x))
    return acc


def popcount_ceiling(threads: int) -> float:
    """Binary GOP/s (2·64 per word) of the XOR-popcount stream on ``threads`` cores' worth."""
    words = np.random.default_rng(0).integers(0, 2**63, 512, dtype=np.uint64)
    # The fastest of 5 calls after the compiling one: a limit, not a typical time.
    (t,) = time_interleaved([lambda: _popcount_stream(words, 20000)], reps=5, grad="enabled")
    return 2 * 64 * 512 * 20000 / t.min / 1e9 * threads  # one stream per core


def vpopcnt_emitted() -> bool:
    """Whether the binary GEMM compiles to AVX-512 ``vpopcntq`` on this machine."""
    from modelzip.kernels import binary

    f = numba.njit(fastmath=True)(binary._xnor_rows.py_func)
    a = np.zeros((2, 1), np.uint64)
    one, zero = np.ones(2, np.float32), np.zeros(2, np.float32)
    f(a, a, 64, np.zeros((2, 2), np.int32), np.zeros((1, 2), np.float32), one, zero, False,
      np.empty(0, np.float32), 0, 1)  # fmt: skip
    return "vpopcntq" in f.inspect_asm(f.signatures[0])


def bench_binary(threads: int, reps: int) -> None:
    n = 1024
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n))
    pa, pb = pack_signs(a), pack_signs(b)
    x, y = torch.from_numpy(a), torch.randn(n, n)
    t = interleaved(
        {
            "xnor": lambda: xnor_gemm(pa, pb, n),
            "xnor_numba": lambda: xnor_gemm_numba(pa, pb, n),
            "bwn": lambda: bwn_gemm(a, pb, n),
            "fp32": lambda: x @ y,
        },
        reps,
    )
    ops = 2 * n**3
    ceiling = popcount_ceiling(threads)
    r = row(
        "binary",
        f"XNOR-popcount GEMM 1024³ ({'Numba' if _native_for(n // 64) is None else KERNEL})",
        threads,
        t["xnor"],
        ops,
        "fp32 GEMM",
        t["fp32"],
        "xnor",
        "fp32",
        fp32_gops=round(ops / t["fp32"] / 1e9, 1),
        ceiling_gops=round(ceiling, 1),
        numba_speedup=round(t["fp32"] / t["xnor_numba"], 2),
    )
    r["of_ceiling"] = round(r["gops"] / ceiling, 2)
    target, label = binary_target()
    r["target"] = target
    CHECKS.append(
        check(
            f"binary GEMM 1024³ vs fp32, {label} ({threads} thr)",
            r["speedup"],
            target,
            "×",
            r["speedup"] >= target,
        )
    )
    row(
        "binary",
        "BWN GEMM 1024³ (adds/subs)",
        threads,
        t["bwn"],
        ops,
        "fp32 GEMM",
        t["fp32"],
        "bwn",
        "fp32",
    )


def bench_bitserial(threads: int, reps: int) -> None:
    n = 1024
    rng = np.random.default_rng(1)
    x, y = torch.randn(n, n), torch.randn(n, n)
    ai = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    bi = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    fns: dict[str, Callable[[], Any]] = {
        "fp32": lambda: x @ y,
        "int8": lambda: torch._int_mm(ai, bi),
    }
    for bits in (2, 4):
        pa = pack_planes(rng.integers(0, 2**bits, (n, n)), bits)
        pb = pack_planes(rng.integers(0, 2**bits, (n, n)), bits)
        c = plane_weights(bits, False)
        fns[f"{bits}"] = lambda pa=pa, pb=pb, c=c: bitserial_gemm_packed(pa, pb, c, c)
    t = interleaved(fns, reps)
    ops = 2 * n**3
    for bits in (2, 4):
        row(
            "bit-serial",
            f"{bits}-bit × {bits}-bit GEMM 1024³",
            threads,
            t[f"{bits}"],
            ops,
            "fp32 GEMM",
            t["fp32"],
            f"{bits}",
            "fp32",
            vs_int8=round(t["int8"] / t[f"{bits}"], 2),
            int8_gops=round(ops / t["int8"] / 1e9, 1),
        )


def bench_sparse(threads: int, reps: int) -> None:
    rng = np.random.default_rng(2)
    m = k = 4096
    cols = 64
    keep = rng.random((m // 4, k // 4)) < 0.10
    w = (rng.standard_normal((m, k)) * np.kron(keep, np.ones((4, 4)))).astype(np.float32)
    bsr = BSRMatrix.from_dense(w, (4, 4))
    wu = (rng.standard_normal((m, k)) * (rng.random((m, k)) < 0.05)).astype(np.float32)
    csr, tcsr = CSRMatrix.from_dense(wu), torch.from_numpy(wu).to_sparse_csr()
    x = rng.standard_normal((k, cols)).astype(np.float32)
    wt, xt = torch.from_numpy(w), torch.from_numpy(x)
    t = interleaved(
        {
            "bsr": lambda: bsr_matmul(bsr, x),
            "bsr_numba": lambda: bsr_matmul_numba(bsr, x),
            "dense": lambda: wt @ xt,
            "csr": lambda: csr_matmul(csr, x),
            "torch_csr": lambda: tcsr @ xt,
        },
        reps,
    )
    r = row(
        "sparse",
        f"BSR 4×4, 90% sparse, 4096² × 4096×64 ({KERNEL})",
        threads,
        t["bsr"],
        2 * bsr.nnz_blocks * 16 * cols,
        "dense fp32",
        t["dense"],
        "bsr",
        "dense",
        numba_speedup=round(t["dense"] / t["bsr_numba"], 2),
    )
    CHECKS.append(
        check(f"BSR 90% vs dense ({threads} thr)", r["speedup"], 5, "×", r["speedup"] >= 5)
    )
    r = row(
        "sparse",
        "CSR, 95% sparse, 4096² × 4096×64",
        threads,
        t["csr"],
        2 * csr.values.shape[0] * cols,
        "torch.sparse CSR",
        t["torch_csr"],
        "csr",
        "torch_csr",
        vs_dense=round(t["dense"] / t["csr"], 2),
    )
    CHECKS.append(
        check(f"CSR 95% vs torch.sparse ({threads} thr)", r["speedup"], 1, "×", r["speedup"] >= 1)
    )


def bench_tt(threads: int, reps: int, rank: int = 8) -> None:
    from modelzip.decompose.tt import TTLinear
    from modelzip.kernels.split_linear import SplitLinear

    g = torch.Generator().manual_seed(3)
    ranks = [1, rank, rank, rank, 1]
    cores = [torch.randn(ranks[i], 8, 8, ranks[i + 1], generator=g) / 8 for i in range(4)]
    layer = TTLinear(4096, 4096, (8,) * 4, (8,) * 4, ranks, bias=False)
    with torch.no_grad():
        for p, c in zip(layer.tt_cores, cores, strict=True):
            p.copy_(c)
    cut = SplitLinear.from_factorized(layer).requires_grad_(False)
    w = torch.randn(4096, 4096, generator=g)
    for batch in (1, 16, 256):
        x = torch.randn(batch, 4096, generator=g)
        with torch.inference_mode():
            t = interleaved(
                {
                    "tt": lambda x=x: tt_matmul(x, cores),
                    "tt_cut": lambda x=x: cut(x),
                    "dense": lambda x=x: x @ w.T,
                },
                reps,
            )
        planned, dense = tt_macs(batch, cores)
        reduction = dense / planned
        best = min(("tt", "tt_cut"), key=lambda k: t[k])
        r = row(
            "factorized",
            f"TT-linear 4096² (8⁴×8⁴, rank {rank}), batch {batch}",
            threads,
            t[best],
            2 * planned,
            "dense fp32",
            t["dense"],
            best,
            "dense",
            mac_reduction=round(reduction, 2),
            form="two-GEMM cut" if best == "tt_cut" else "MAC-minimal einsum",
            einsum_ms=round(t["tt"] * 1e3, 3),
            cut_ms=round(t["tt_cut"] * 1e3, 3),
            cut_mac_reduction=round(dense / (batch * cut.macs_per_row()), 2),
        )
        r["of_mac_reduction"] = round(r["speedup"] / reduction, 2)
        CHECKS.append(
            check(
                f"TT batch {batch}: speedup / MAC reduction ({threads} thr)",
                r["of_mac_reduction"],
                0.7,
                "",
                r["of_mac_reduction"] >= 0.7,
            )
        )


class Sign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0, -1.0, 1.0)


def _binarize(layer: nn.Module) -> None:
    with torch.no_grad():
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        alpha = w.abs().mean(dim=1, keepdim=True)
        layer.weight.copy_((torch.where(w < 0, -1.0, 1.0) * alpha).reshape(layer.weight.shape))


def e2e_models() -> dict[str, tuple[nn.Module, nn.Module]]:
    """(fp32 model, compressed model) pairs: binarized LeNet-5 and VGG-small, int8 LeNet-5,
    W2A2 LeNet-300-100."""
    from modelzip.models import create
    from modelzip.quantize.int8 import Int8Conv2d, Int8Linear
    from modelzip.quantize.int8_method import Int8Config

    torch.manual_seed(0)
    fp = create("lenet5").eval()
    layers = OrderedDict(fp.named_children())
    binary = OrderedDict()
    for name, mod in layers.items():
        mod = __import__("copy").deepcopy(mod)
        if name in ("conv2", "fc1"):  # first and last layers stay real, as in XNOR-Net
            binary[f"sign_{name}"] = Sign()
            _binarize(mod)
        binary[name] = mod
    pairs = {"binarized LeNet-5": (fp, nn.Sequential(binary).eval())}
    int8 = OrderedDict()
    for name, mod in layers.items():
        if isinstance(mod, nn.Linear):
            mod = Int8Linear.from_dense(mod, Int8Config(activations="float"))
        elif isinstance(mod, nn.Conv2d):
            mod = Int8Conv2d.from_dense(mod, Int8Config())
        int8[name] = mod
    pairs["int8 LeNet-5"] = (fp, nn.Sequential(int8).eval())
    vgg = create("vgg_small").eval()
    bvgg = OrderedDict()
    for name, mod in vgg.named_children():
        mod = __import__("copy").deepcopy(mod)
        if name.startswith("relu") and name[-1] in "1234":
            mod = Sign()  # a BNN's activation is the sign
        if name in ("conv2", "conv3", "conv4", "conv5"):
            _binarize(mod)
        bvgg[name] = mod
    pairs["binarized VGG-small"] = (vgg, nn.Sequential(bvgg).eval())
    # W2A2: 2-bit uniform per-row weights and PACT 2-bit inputs on the hidden layers of
    # LeNet-300-100 (the first and last layers stay float), run bit-serially when materialized.
    from modelzip.quantize.fake import FakeQuantLinear

    mlp = create("lenet300").eval()
    low = OrderedDict()
    for name, mod in mlp.named_children():
        if name in ("fc2", "fc3"):
            q = FakeQuantLinear(mod.in_features, mod.out_features, bias=True, scheme="uniform",
                                bits=2, per_channel=True, act_bits=2, act_clip=2.0)  # fmt: skip
            q._copy_from(mod)
            mod = q
        low[name] = __import__("copy").deepcopy(mod)
    pairs["W2A2 LeNet-300-100 (bit-serial)"] = (mlp, nn.Sequential(low).eval())
    return pairs


def bench_e2e(threads: int, reps: int, batch: int = 64) -> list[str]:
    x = torch.randn(batch, 1, 28, 28)
    notes = []
    for name, (fp, compressed) in e2e_models().items():
        fast, report = materialize(compressed, x, reps=3, choose="compressed")
        notes.append(
            f"{name}: "
            + "; ".join(f"{r.name} → {r.kernel}" for r in report.layers if r.kernel != "unchanged")
        )
        with torch.no_grad():
            t = interleaved(
                {
                    "fast": lambda fast=fast: fast(x),
                    "fp": lambda fp=fp: fp(x),
                    "ref": lambda c=compressed: c(x),
                },
                reps,
            )
        row(
            "end to end",
            f"{name}, batch {batch}",
            threads,
            t["fast"],
            0,
            "fp32 model",
            t["fp"],
            "fast",
            "fp",
            vs_unmaterialized=round(t["ref"] / t["fast"], 2),
            max_rel_error=report.max_rel_error,
        )
    return notes


NOTES = """\
Reading the table: on a machine shared with other jobs (the load average is given above) wall
times swing several-fold between runs and the 2-thread rows mostly measure waiting for a second
core: small PyTorch ops then take milliseconds. The XNOR and BSR rows time the AVX-512 kernels
(`modelzip/kernels/native/avx512.cpp`, built with torch's cpp_extension on first use) and,
beside them, the portable Numba kernels (`numba_speedup`): Numba reduces each XNOR output
across the words of a vector register and writes each BSR output row once per block, while
the C++ kernels keep an 8 × 16 tile of popcount counts and a 4 × 64 tile of float sums in
registers; the Numba XNOR GEMM sat at the 10× line on 2 threads (9.7-10.3 over five runs), the
AVX-512 one well above it. TT products run in the form measured fastest: opt_einsum's MAC-minimal
chain of small GEMMs, each followed by a strided permute copy, or the two-GEMM cut of the
network at its middle bond (`SplitLinear`, factors contracted once at load time, rows in chunks
that keep the intermediate in cache), which has the same MACs here (reduction 4.0) but runs its
GEMMs near the dense rate; at batch 1 the dense product is bound by reading the 64 MiB weight
and the TT speedup exceeds the MAC reduction. Bit-serial cost grows with bits² (one
AND-popcount pass per plane pair), so 4-bit falls behind int8 `torch._int_mm`. End-to-end models
are limited by the layers that stay in float (first convolution, pooling, BN, the sign
activations); measured alone, the binary convolutions ran 2-10× faster than the fp32 ones.
"""


def _threaded(bench: Callable[[int, int], Any]) -> Part:
    """A part that runs ``bench(threads, reps)`` on 1 then 2 threads (PyTorch and Numba)."""

    def part(ctx: BenchContext) -> PartResult:
        ROWS.clear()
        CHECKS.clear()
        reps = 11 if ctx.quick else 41
        extra: dict[str, Any] = {"reps": reps, "load_average": os.getloadavg()[0]}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            numba.set_num_threads(threads)
            notes = bench(threads, reps)
        if bench is bench_binary:
            extra["vpopcntq"] = vpopcnt_emitted()
        if notes:
            extra["notes"] = notes  # the 2-thread run's, as materialize() chose them
        return PartResult(list(ROWS), list(CHECKS), "", extra)

    return part


def _section(ctx: BenchContext, done: dict[str, dict[str, Any]]) -> str:
    """The ``kernels`` section: one table of every part's rows (1-thread rows first), the checks,
    the end-to-end notes."""
    rows = sorted((r for p in done.values() for r in p["rows"]), key=lambda r: r["threads"])
    checks = [c for p in done.values() for c in p["checks"]]
    first = next(iter(done.values()))
    quick = any(p["quick"] for p in done.values())
    emitted = done["binary"]["vpopcntq"] if "binary" in done else vpopcnt_emitted()
    notes = done["e2e"].get("notes", []) if "e2e" in done else []
    headers = ["group", "kernel", "thr", "ms", "GOP/s", "speedup", "against", "notes"]
    table = []
    for r in rows:
        extra = {
            k: v
            for k, v in r.items()
            if k not in ("group", "name", "threads", "ms", "gops", "speedup", "anchor")
        }
        table.append(
            [
                r["group"],
                r["name"],
                r["threads"],
                r["ms"],
                r["gops"] or "-",
                f"{r['speedup']}×",
                r["anchor"],
                ", ".join(f"{k}={v}" for k, v in extra.items()),
            ]
        )
    lines = [
        f"| {c['name']} | {c['value']} | {c['target']} | {'met' if c['passed'] else 'missed'} |"
        for c in checks
    ]
    return (
        f"## CPU kernels (`benchmarks/kernels.py{' --quick' if quick else ''}`)\n\n"
        f"Medians of {first['reps']} interleaved runs (wall clock; `cpu_speedup`: the same ratio "
        "in process CPU time, steadier when the machine is shared); binary ops counted as "
        f"2·M·N·K. AVX-512 `vpopcntq` "
        f"emitted: {emitted}. `ceiling_gops`: an XOR-popcount stream on L1 data (per-core limit "
        f"× threads). Load average at the start: {first['load_average']:.1f} on "
        f"{os.cpu_count()} cores.\n\n" + markdown_table(headers, table) + "\n\n"
        "| check (wall-clock ratios) | value | target | |\n|---|---|---|---|\n"
        + "\n".join(lines)
        + "\n\n"
        "Materialized end-to-end models: " + " / ".join(notes) + "\n\n" + NOTES
    )


PARTS = {
    "binary": _threaded(bench_binary),
    "bitserial": _threaded(bench_bitserial),
    "sparse": _threaded(bench_sparse),
    "tt": _threaded(bench_tt),
    "e2e": _threaded(bench_e2e),
}


def main(argv: list[str] | None = None) -> int:
    return run_parts(
        "kernels", "CPU kernels", PARTS, __doc__.splitlines()[0], argv, section=_section
    )


if __name__ == "__main__":
    sys.exit(main())
