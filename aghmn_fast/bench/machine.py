"""What a benchmark ran on: CPU model, cores, ISA flags, library versions, GPU card and driver."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from typing import Dict, List, Optional

import torch

__all__ = ["machine_info", "machine_slug", "slugify", "ISA_FLAGS"]

# The flags that decide which kernel variants and vector widths a CPU build can use.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")


def _cpuinfo(path: str = "/proc/cpuinfo") -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: Dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _command(cmd: List[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    commit = _command(["git", "-C", here, "rev-parse", "--short", "HEAD"])
    if commit and _command(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    return commit or "unknown"


def machine_info(device: str = "cpu", cpuinfo_path: str = "/proc/cpuinfo") -> Dict:
    """A JSON-ready description of this machine and software for a benchmark record."""
    cpu = _cpuinfo(cpuinfo_path)
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "arch": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "git_commit": _git_commit(),
        "load_average_at_start": load,
        "device": device,
    }
    if torch.device(device).type == "cuda":
        smi = _command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        cc = torch.cuda.get_device_capability()
        info.update(gpu=torch.cuda.get_device_name(), driver=smi.splitlines()[0] if smi else "unknown",
                    cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()),
                    compute_capability=f"{cc[0]}.{cc[1]}")
    return info


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except Exception as exc:  # the record says why there is no Triton
        return f"unavailable ({type(exc).__name__})"


def slugify(text: str) -> str:
    """A file-name-safe lowercase form: "Intel(R) Xeon(R) Gold 6338" -> "intel-xeon-gold-6338"."""
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_slug(info: Dict, name: Optional[str] = None) -> str:
    """The results folder name: the GPU card on CUDA, else the CPU model and its core count."""
    if name:
        return slugify(name)
    if info.get("gpu"):
        return slugify(info["gpu"])
    model = re.sub(r"\b(cpu|processor)\b|@.*$", "", info.get("cpu_model", ""), flags=re.I)
    return f"{slugify(model)}-{info.get('cores') or 0}c"
