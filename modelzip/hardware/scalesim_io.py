"""Read SCALE-Sim's inputs: topology CSVs (conv and GEMM forms) and ``.cfg`` architecture files.

So that the same files give both tools' answers, layers are read the way SCALE-Sim reads them
(``scalesim/topology_utils.py``):

* conv rows ``name, IFMAP H, IFMAP W, filter H, filter W, channels, filters, stride[, N:M]``;
  output size ``ceil((H - R + stride) / stride)`` (one more row than PyTorch's
  ``floor((H - R) / stride) + 1`` when the stride does not divide ``H - R``); a name containing
  ``DP`` is depthwise: each channel is its own layer with one channel (here ``groups = C``);
* GEMM rows ``name, M, N, K`` (a header with ``M, N, K``): ``M x K`` times ``K x N``;
* words are one byte (SCALE-Sim's ``word_size``), so layers are 8-bit unless ``bits`` says
  otherwise; an ``N:M`` sparsity ratio becomes structured weight sparsity ``1 - N / M``.
"""

from __future__ import annotations

import configparser
import csv
import math
from pathlib import Path

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload
from modelzip.hardware.spec import AcceleratorSpec


def _ints(row: list[str], path: Path, line: int, count: int) -> list[int]:
    try:
        return [int(x) for x in row[:count]]
    except ValueError:
        raise ConfigError(f"{path}:{line}: expected {count} integers, got {row[:count]}") from None


def workloads_from_topology_csv(path: str | Path, bits: int = 8) -> list[Workload]:
    """Layers of a SCALE-Sim topology CSV as workloads (conv or GEMM form, from the header)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such topology file: {path}")
    with open(path, newline="") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f)]
    rows = [[c for c in r if c != ""] for r in rows]
    rows = [r for r in rows if r]
    if not rows:
        raise ConfigError(f"{path}: empty topology file")
    header = [h.upper() for h in rows[0]]
    gemm = header[1:4] == ["M", "N", "K"]
    out = []
    for line, row in enumerate(rows[1:], start=2):
        name = row[0]
        if gemm:
            m, n, k = _ints(row[1:], path, line, 3)
            out.append(
                Workload(
                    name,
                    "matmul",
                    "GEMM",
                    N=m,
                    C=k,
                    K=n,
                    params=n * k,
                    weight_bits=bits,
                    act_bits=bits,
                    weight_bytes=n * k * bits // 8,
                    input_bytes=m * k * bits // 8,
                    output_bytes=m * n * bits // 8,
                )
            )
            continue
        H, W, R, S, C, K, stride = _ints(row[1:], path, line, 7)
        if R > H or S > W:
            raise ConfigError(f"{path}:{line}: filter {R}x{S} is larger than the ifmap {H}x{W}")
        sparsity = 0.0
        if len(row) > 8 and ":" in row[8]:
            n_keep, m_block = (int(x) for x in row[8].split(":"))
            sparsity = 1.0 - n_keep / m_block
        P, Q = math.ceil((H - R + stride) / stride), math.ceil((W - S + stride) / stride)
        groups, c_per_group = (C, 1) if "DP" in name else (1, C)
        params = K * c_per_group * R * S * groups
        out.append(
            Workload(
                name,
                "conv",
                "Conv2d",
                N=1,
                C=c_per_group,
                K=K,
                R=R,
                S=S,
                P=P,
                Q=Q,
                H=H,
                W=W,
                stride_h=stride,
                stride_w=stride,
                groups=groups,
                params=params,
                weight_bits=bits,
                act_bits=bits,
                weight_sparsity=sparsity,
                weight_bytes=params * bits // 8,
                input_bytes=C * H * W * bits // 8,
                output_bytes=K * groups * P * Q * bits // 8,
            )
        )
    return out


def spec_from_scalesim_cfg(path: str | Path) -> AcceleratorSpec:
    """An :class:`AcceleratorSpec` from a SCALE-Sim ``.cfg`` (array, buffers, dataflow, bandwidth).

    ``Bandwidth`` is used (words per cycle, one byte each) only when ``InterfaceBandwidth`` is
    ``USER``; with ``CALC`` SCALE-Sim computes the bandwidth it needs, which here is unlimited.
    Partial sums follow SCALE-Sim (``accumulate_in_buffer=False``: each row fold's outputs are
    written to DRAM).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such SCALE-Sim config: {path}")
    cp = configparser.ConfigParser()
    try:
        cp.read(path)
        arch = cp["architecture_presets"]
        user_bw = cp.get("run_presets", "InterfaceBandwidth", fallback="CALC").strip() == "USER"
        bandwidth = 0.0
        if user_bw:
            bandwidth = float(arch.get("Bandwidth", "0").split(",")[0])
        return AcceleratorSpec(
            name=cp.get("general", "run_name", fallback=path.stem).strip(),
            array="systolic",
            rows=int(arch["ArrayHeight"]),
            cols=int(arch["ArrayWidth"]),
            dataflow=arch["Dataflow"].strip().lower(),
            word_bits=8,
            ifmap_sram_kb=float(arch["IfmapSramSzkB"]),
            filter_sram_kb=float(arch["FilterSramSzkB"]),
            ofmap_sram_kb=float(arch["OfmapSramSzkB"]),
            dram_bandwidth=bandwidth,
            accumulate_in_buffer=False,
            energy_model="horowitz",
        )
    except (configparser.Error, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: not a SCALE-Sim config ({e})") from None
