"""Registers, spills and programs per SM of the MoE decode kernels, compiled for Hopper
(sm_90) on any machine: Triton's compiler and its bundled ptxas run without a GPU.

A kernel that reads weights before its wait (triton_pdl) holds them in registers, and its
programs must all be resident at once; when the registers grow, fewer fit and the grid
runs in waves. That is what once made the down kernel 1.4x slower (244 registers, 2
programs per SM); this script found it without device time. For each MoE model of the
catalog (and h-small at TP=2) it compiles gate/up and down at the shapes `triton_moe`
launches (one token routed in the kernels, and routed batches) and prints, per kernel,
registers, stack (spills), programs per SM and whether the grid fits at once on 132 SMs.

    pip install triton==3.6.0   # the device's version; the CPU torch wheel has none
    python3 bench/kernel_registers.py
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # the CPU torch wheel brings no Triton
    raise SystemExit("kernel_registers.py needs Triton: pip install triton==3.6.0") from None


from common import programs_per_sm

from granite_ops_kit.catalog import __file__ as catalog_init
from granite_runtime.kernels.triton import moe as triton_moe

SMS = 132  # H100 SXM and H200
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def compile_for_hopper(kernel, constexprs: dict, warps: int) -> dict:
    """{regs, stack, shared} of `kernel` compiled for sm_90. Pointer and integer arguments are
    taken as 16-byte aligned, as the launcher specialises them; `experts_ptr` is int64."""
    names = [p.name for p in kernel.params]
    signature = {
        n: "constexpr" if n in constexprs else
        ("*i64" if n == "experts_ptr" else "*bf16") if n.endswith("_ptr") else "i32"
        for n in names
    }  # fmt: skip
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in constexprs}
    source = ASTSource(
        kernel, signature, {(names.index(n),): v for n, v in constexprs.items()}, attrs
    )
    compiled = triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True)
    line = next(x for x in usage.stdout.splitlines() if "REG:" in x)
    fields = dict(kv.split(":", 1) for kv in line.split() if ":" in kv)
    return {"regs": int(fields["REG"]), "stack": int(fields["STACK"]),
            "shared": compiled.metadata.shared}  # fmt: skip


def moe_kernels(h: int, i: int, e: int, k: int, s: int, routed: bool, config) -> list[tuple]:
    """(name, kernel, constexprs, warps, programs) of one MoE layer's two kernels as
    triton_moe launches them, for one token (`routed`: the router's top-k inside the
    kernels, the shared MLP inside down) or for 8 routed first."""
    tokens, shared, experts = (1, s, e) if routed else (8, 0, 1)
    shapes = triton_moe.launch_shapes(tokens, k, experts, h, i, shared, routed, config)
    kernels = []
    for name, kernel, grid, constexprs in zip(
        ("gate_up", "down"), (triton_moe._gate_up_kernel, triton_moe._down_kernel),
        shapes[0::2], shapes[1::2], strict=True,
    ):  # fmt: skip
        constexprs = dict(constexprs, PDL=True)
        warps = constexprs.pop("num_warps")
        kernels.append((name, kernel, constexprs, warps, grid[0] * grid[1]))
    return kernels


def main() -> None:
    catalog = Path(catalog_init).parent
    for path in sorted(catalog.glob("*.json")):
        c = json.loads(path.read_text())
        if not c.get("num_local_experts"):
            continue
        h, e, k = c["hidden_size"], c["num_local_experts"], c["num_experts_per_tok"]
        for tp in (1, 2) if path.stem.endswith("small") else (1,):
            i, s = c["intermediate_size"] // tp, c.get("shared_intermediate_size", 0) // tp
            for routed, config in ((True, triton_moe.ROUTED_CONFIG), (False, triton_moe.CONFIG)):
                for name, kernel, constexprs, warps, grid in moe_kernels(
                    h, i, e, k, s, routed, config
                ):
                    r = compile_for_hopper(kernel, constexprs, warps)
                    fit = programs_per_sm(warps, r["regs"], r["shared"])
                    waves = "at once" if grid <= fit * SMS else f"{-(-grid // (fit * SMS))} waves"
                    print(
                        f"{path.stem} TP={tp} {'1 token' if routed else '8 tokens'} {name} "
                        f"{config}: {warps} warps, {r['regs']} regs, {r['stack']} B stack, "
                        f"{fit}/SM, {grid} programs ({waves})"
                    )


if __name__ == "__main__":
    main()
