"""GPUs as data: memory the driver reports, bandwidth, dense tensor throughput, interconnect.

Memory is what a process can see (nvidia-smi's total, MiB), not the marketing number:
an "80 GB" H100 shows 81,559 MiB. Rates are the vendors' dense (not sparse) figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from granite_ops_kit.errors import UsageError


@dataclass(frozen=True)
class GPU:
    name: str
    label: str
    memory_mib: int
    bandwidth_gbs: float  # HBM/GDDR, GB/s
    bf16_tflops: float  # dense
    fp8_tflops: float  # dense; 0 where the chip has no FP8
    interconnect: str
    interconnect_gbs: float  # per GPU, one direction

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    def to_json(self) -> dict:
        return asdict(self)


CATALOG: dict[str, GPU] = {
    g.name: g
    for g in [
        GPU("h100-80gb", "NVIDIA H100 SXM 80GB", 81_559, 3350, 989, 1979, "NVLink 4", 450),
        GPU("h100-nvl-94gb", "NVIDIA H100 NVL 94GB", 95_830, 3900, 835, 1671, "NVLink bridge", 300),
        GPU("h200-141gb", "NVIDIA H200 SXM 141GB", 143_771, 4800, 989, 1979, "NVLink 4", 450),
        GPU("b200-180gb", "NVIDIA B200 180GB", 183_359, 8000, 2250, 4500, "NVLink 5", 900),
        GPU("a100-40gb", "NVIDIA A100 SXM 40GB", 40_960, 1555, 312, 0, "NVLink 3", 300),
        GPU("a100-80gb", "NVIDIA A100 SXM 80GB", 81_920, 2039, 312, 0, "NVLink 3", 300),
        GPU("l40s", "NVIDIA L40S 48GB", 46_068, 864, 362, 733, "PCIe 4.0 x16", 32),
        GPU("l4", "NVIDIA L4 24GB", 23_034, 300, 121, 242, "PCIe 4.0 x16", 32),
        GPU("a10g", "NVIDIA A10G 24GB", 23_028, 600, 70, 0, "PCIe 4.0 x16", 32),
        GPU("rtx-4090", "NVIDIA GeForce RTX 4090 24GB", 24_564, 1008, 165, 330, "PCIe 4.0 x16", 32),
        GPU(
            "mi300x", "AMD Instinct MI300X 192GB", 196_592, 5300, 1307, 2615, "Infinity Fabric", 448
        ),
    ]
}

ALIASES = {
    "h100": "h100-80gb",
    "h100-sxm": "h100-80gb",
    "h100-nvl": "h100-nvl-94gb",
    "h200": "h200-141gb",
    "b200": "b200-180gb",
    "a100": "a100-80gb",
    "4090": "rtx-4090",
}


def find_gpu(name: str) -> GPU:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in CATALOG:
        raise UsageError(f"unknown GPU '{name}'; known: {', '.join(CATALOG)}.")
    return CATALOG[key]
