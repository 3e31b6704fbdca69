"""How much of a LoRA update survives in bf16: merged into the weights vs added by the per-row hook.

    python benchmarks/bf16_merge.py

One t5-base-sized q/v projection (768 × 768, random weights), a rank-32 update of relative size
‖ΔW‖/‖W‖ = 1e-2 / 3e-3 / 1e-3, 64 input rows. Prints the relative error of the update the layer
applies, against the float32 update, for: ΔW added to bf16 weights (what `merged_lora` did on bf16
weights), ΔW added in float32 and the sum rounded to bf16 (merging "in float32" while the matmul
stays bf16), and the hook's s·B(Ax) in bf16. This is why `TAGIModel` merges only where
`merge_is_exact` holds and otherwise serves one task through the hooks, as training does.
"""

import torch


def update_errors(relative: float, seed: int = 0) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(768, 768, generator=generator) * 0.05
    x = torch.randn(64, 768, generator=generator)
    A = torch.randn(32, 768, generator=generator) / 768 ** 0.5
    B = torch.randn(768, 32, generator=generator)
    B *= relative * W.norm() / (B @ A).norm()
    exact = x @ (B @ A).T  # (64, 768) the update in float32
    Wb, xb = W.bfloat16(), x.bfloat16()
    base = (xb @ Wb.T).float()
    applied = {
        "merged into bf16 weights": (xb @ (Wb + (B @ A).bfloat16()).T).float() - base,
        "merged in float32, rounded to bf16": (xb @ (Wb.float() + B @ A).bfloat16().T).float() - base,
        "per-row hook in bf16": ((xb @ A.bfloat16().T) @ B.bfloat16().T).float(),
    }
    return {name: float((update - exact).norm() / exact.norm()) for name, update in applied.items()}


def main() -> None:
    for relative in (1e-2, 3e-3, 1e-3):
        errors = update_errors(relative)
        print(f"‖ΔW‖/‖W‖ = {relative:g}: " + "; ".join(f"{name} {error:.1%}" for name, error in errors.items()))


if __name__ == "__main__":
    main()
