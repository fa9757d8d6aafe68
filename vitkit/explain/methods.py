"""Where a transformer looked: raw attention per layer/head, attention rollout (Abnar & Zuidema 2020,
"Quantifying Attention Flow in Transformers"), gradient-weighted relevance (Chefer, Gur & Wolf 2021,
"Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers") and
decoder cross-attention maps (DETR object queries, caption words).

Every method reads the weights that the shared `vitkit.nn.Attention` keeps under `capture_attention`:
there is no second attention implementation here. Maps are over the patch grid, (B, gh, gw); turning
them into pictures is `vitkit.explain.render`'s job.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..nn import capture_attention

Method = Literal["rollout", "attention", "grad"]
METHODS: tuple[str, ...] = ("rollout", "attention", "grad")
HeadFusion = Literal["mean", "max", "min"]
Pool = Literal["token", "avg"]


@dataclass
class Explanation:
    """Maps for a batch of images.

    heatmap: (B, gh, gw) the method's map for the target class, unnormalised.
    layers: per-layer maps, (B, L, gh, gw); for "attention" (B, L, heads, gh, gw).
    logits: (B, K) the model's output on the images.
    target: (B,) the class each map explains (the prediction unless a target was given).
    """

    method: str
    heatmap: torch.Tensor
    layers: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor


# --------------------------------------------------------------------------- building blocks
def fuse_heads(attn: torch.Tensor, how: HeadFusion = "mean") -> torch.Tensor:
    """(B, heads, N, M) -> (B, N, M) by the mean (Abnar & Zuidema), max or min over heads."""
    if how == "mean":
        return attn.mean(dim=1)
    if how == "max":
        return attn.amax(dim=1)
    if how == "min":
        return attn.amin(dim=1)
    raise ValueError(f"head_fusion={how!r}; expected 'mean', 'max' or 'min'")


def rollout_per_layer(attns: Sequence[torch.Tensor], head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """Attention rollout after each layer: (B, L, N, N), the last entry is the rollout of the whole stack.

    Each layer's head-fused attention plus the identity (the residual connection), row-normalised, is
    multiplied onto the product of the layers below: R_l = norm(A_l + I) @ R_{l-1}, R_0 = I.
    """
    B, _, N, _ = attns[0].shape
    eye = torch.eye(N, dtype=attns[0].dtype, device=attns[0].device).expand(B, N, N)
    result, out = eye, []
    for attn in attns:
        a = fuse_heads(attn, head_fusion) + eye  # (B, N, N)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
        out.append(result)
    return torch.stack(out, dim=1)


def rollout(attns: Sequence[torch.Tensor], head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """Attention rollout of a stack of self-attention weights [(B, heads, N, N)] * L -> (B, N, N)."""
    return rollout_per_layer(attns, head_fusion)[:, -1]


def gradient_relevance(
    attns: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chefer et al. 2021 (Generic Attention-model Explainability), self-attention rule.

    Per layer, the gradient-weighted attention Ā = mean_heads((∇A ⊙ A)⁺) ("attention × gradient" for the
    chosen class); relevance starts at R = I and accumulates R <- R + Ā @ R from the first layer up.

    Returns:
        (relevance (B, N, N) of the whole stack, per-layer Ā (B, L, N, N)).
    """
    B, _, N, _ = attns[0].shape
    rel = torch.eye(N, dtype=attns[0].dtype, device=attns[0].device).expand(B, N, N)
    cams = []
    for attn, grad in zip(attns, grads):
        cam = (grad * attn).clamp(min=0).mean(dim=1)  # (B, heads, N, N) -> (B, N, N)
        rel = rel + cam @ rel
        cams.append(cam)
    return rel, torch.stack(cams, dim=1)


def read_out(matrix: torch.Tensor, num_prefix: int, pool: Pool) -> torch.Tensor:
    """What the pooled feature draws from each patch: (..., N, N) -> (..., N_patches).

    "token": the class token's row; "avg" (mean of the patch tokens): the mean of the patch tokens' rows.
    Columns of prefix tokens (class, registers) are dropped.
    """
    if pool == "token":
        return matrix[..., 0, num_prefix:]
    return matrix[..., num_prefix:, num_prefix:].mean(dim=-2)


def region_read_out(matrix: torch.Tensor, region: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """What the patches of a region draw from every patch: the mean of their rows, (B, N, N) and a (B, N_patches)
    boolean region -> (B, N_patches); zeros for an empty region. `read_out(..., "avg")` is the whole image."""
    rows = matrix[:, num_prefix:, num_prefix:]  # (B, Np, Np)
    w = region.to(rows.dtype)
    return (w[:, :, None] * rows).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp(min=1)


def to_grid(values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(..., gh * gw) patch values in raster order -> (..., gh, gw)."""
    return values.reshape(*values.shape[:-1], *grid)


def cross_attention_maps(
    weights: Sequence[torch.Tensor],
    grid: tuple[int, int],
    num_prefix: int = 0,
    layer: int | Literal["mean"] = -1,
    head_fusion: HeadFusion = "mean",
) -> torch.Tensor:
    """Where each decoder query looked in the image: captured cross-attention -> (B, Q, gh, gw).

    Args:
        weights: one (B, heads, Q, M) tensor per decoder layer (`attn_weights` of each cross-attention
            `Attention`), M = num_prefix + gh * gw memory tokens. For a caption decoded step by step with a
            KV cache, concatenate each layer's per-step weights along dim 2 so that Q counts the words.
        grid: the encoder's patch grid (gh, gw).
        num_prefix: leading memory tokens that are not patches (class, registers); dropped.
        layer: which decoder layer (negative counts from the last), or "mean" over layers.
        head_fusion: "mean", "max" or "min" over heads.
    """
    if not weights:
        raise ValueError("cross_attention_maps: no cross-attention weights; run the decoder under capture_attention")
    fused = torch.stack([fuse_heads(w, head_fusion) for w in weights], dim=1)  # (B, L, Q, M)
    if fused.shape[-1] != num_prefix + grid[0] * grid[1]:
        raise ValueError(
            f"cross_attention_maps: {fused.shape[-1]} memory tokens; expected num_prefix={num_prefix} + "
            f"{grid[0]}x{grid[1]} patches"
        )
    chosen = fused.mean(dim=1) if layer == "mean" else fused[:, layer]  # (B, Q, M)
    return to_grid(chosen[..., num_prefix:], grid)


# --------------------------------------------------------------------------- ViT classifiers
def vit_layout(model: nn.Module) -> tuple[tuple[int, int], int, Pool]:
    """(patch grid, number of prefix tokens, pooling) of a vitkit/timm-style ViT."""
    grid = tuple(model.patch_embed.grid_size)
    return grid, int(getattr(model, "num_prefix_tokens", 1)), getattr(model, "global_pool", "token")


def self_attentions(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward with capture on: (logits, [(B, heads, N, N) per self-attention layer, in order])."""
    with capture_attention(model) as attns:
        logits = model(x)
    weights = [a.attn_weights for a in attns if not a.cross]
    if not weights:
        raise ValueError(
            f"{type(model).__name__} has no vitkit.nn.Attention to capture; expected a vitkit model (a timm ViT's "
            "weights load into vitkit.create_model with the same name)"
        )
    return logits, weights


def explain_classifier(
    model: nn.Module,
    x: torch.Tensor,
    method: Method = "rollout",
    target: torch.Tensor | int | None = None,
    head_fusion: HeadFusion = "mean",
) -> Explanation:
    """Explain a ViT classifier's decision on images x (B, 3, H, W) with one of METHODS.

    "attention": the pooled token's raw attention to the patches, per layer and head (heatmap: last layer,
    heads averaged). "rollout": attention rollout (heatmap: the full stack; layers: rollout up to each layer).
    "grad": Chefer et al.'s gradient-weighted relevance for `target` (default: the predicted class).
    "attention" and "rollout" do not depend on the target; it is still recorded.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {', '.join(METHODS)}")
    grid, prefix, pool = vit_layout(model)
    if method == "grad":
        return _explain_grad(model, x, target, grid, prefix, pool)
    with torch.no_grad():
        logits, attns = self_attentions(model, x)
    tgt = _target(logits, target)
    if method == "attention":
        stacked = torch.stack(attns, dim=1)  # (B, L, heads, N, N)
        layers = to_grid(read_out(stacked, prefix, pool), grid)  # (B, L, heads, gh, gw)
        return Explanation(method, layers[:, -1].mean(dim=1), layers, logits, tgt)
    per_layer = to_grid(read_out(rollout_per_layer(attns, head_fusion), prefix, pool), grid)  # (B, L, gh, gw)
    return Explanation(method, per_layer[:, -1], per_layer, logits, tgt)


def _explain_grad(model, x, target, grid, prefix, pool) -> Explanation:
    x = x.detach().clone().requires_grad_(True)  # gradients reach the attention even with frozen weights
    with torch.enable_grad():
        logits, attns = self_attentions(model, x)
        tgt = _target(logits, target)
        score = logits.gather(1, tgt[:, None]).sum()  # images are independent in eval mode: one backward
        grads = torch.autograd.grad(score, attns)
    attns = [a.detach() for a in attns]
    rel, cams = gradient_relevance(attns, grads)
    eye = torch.eye(rel.shape[-1], dtype=rel.dtype, device=rel.device)
    heatmap = to_grid(read_out(rel - eye, prefix, pool), grid)  # the identity is no evidence
    layers = to_grid(read_out(cams, prefix, pool), grid)  # (B, L, gh, gw)
    return Explanation("grad", heatmap, layers, logits.detach(), tgt)


def _target(logits: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    if target is None:
        return logits.argmax(dim=-1)
    target = torch.as_tensor(target, device=logits.device).long()
    return target.expand(logits.shape[0]) if target.ndim == 0 else target
