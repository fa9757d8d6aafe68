"""DETR-style detection head on encoder tokens (Carion et al. 2020, "End-to-End Object Detection with
Transformers"), with what makes it train in minutes instead of days on small data: anchor-box queries whose
positions are re-embedded at every layer (DAB-DETR, Liu et al. 2022), per-layer box refinement (Deformable
DETR, Zhu et al. 2021), denoising queries built from noised ground truth (DN-DETR, Li et al. 2022) and fixed
2-D sin-cos positions on the memory. Attention is vitkit's own `DecoderBlock`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...nn import DecoderBlock, sincos_2d_pos_embed

Output = dict[str, torch.Tensor]


class PredictionMLP(nn.Module):
    """Linear -> ReLU -> ... -> Linear: DETR's box/class FFN (`layers.i` names, as DETR and transformers)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


def _cell_boxes(grid: tuple[int, int]) -> torch.Tensor:
    """(h*w, 4) cxcywh boxes centred on each patch cell (row-major), two cells wide and high."""
    h, w = grid
    y, x = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    size = torch.tensor([2.0 / w, 2.0 / h]).expand(h * w, 2)
    return torch.cat([x.reshape(-1, 1), y.reshape(-1, 1), size], dim=1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def box_sine_embed(boxes: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(..., 4) normalised cxcywh -> (..., 4 * dim / 2): sin/cos of each coordinate at dim/4 frequencies (DAB-DETR)."""
    half = dim // 2
    freqs = temperature ** (2 * (torch.arange(half, device=boxes.device) // 2) / half)  # (half,)
    angles = boxes[..., None] * (2 * math.pi) / freqs  # (..., 4, half)
    emb = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(-2)  # (..., 4, half)
    return emb.flatten(-2)


@dataclass
class DenoisingQueries:
    """Noised copies of the ground truth fed beside the learned queries during training (DN-DETR).

    `groups` copies of each image's targets, padded to `pad` per group: queries (B, groups * pad, dim), their
    anchors (B, groups * pad, 4) as box logits, what they must reconstruct (`labels`, `boxes`) and `valid`
    (False at padding). `attn_mask` (T, T) keeps the learned queries from seeing any denoising query and
    the groups from seeing each other.
    """

    content: torch.Tensor
    anchors: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    attn_mask: torch.Tensor
    groups: int
    pad: int

    @property
    def length(self) -> int:
        return self.groups * self.pad


class DetrHead(nn.Module):
    """Object queries through `depth` DecoderBlocks cross-attending the encoder tokens; class and box MLPs
    after every layer (auxiliary outputs).

    Each query is a learned content vector plus an anchor box. Before every layer the current box (the
    anchor, then each layer's prediction, detached) is embedded (sin-cos + MLP) and added to the query; the
    layer's box MLP predicts an offset to that box in logit space. Anchors are either learned per query
    (`query_init="learned"`, DAB-DETR) or chosen per image (`"encoder"`, the two-stage query selection of
    Deformable DETR / DINO): every patch token predicts a class and a box around its own position
    ("enc_outputs", trained with the same set loss), and the `num_queries` most confident boxes become the
    anchors. The second starts every query near an object and converges far faster on small data. With
    it, a second pair of token heads ("enc_outputs"["dense"]) is trained one-to-many, every token inside an
    object being a positive for it (Co-DETR's auxiliary dense assignment): a dense signal for the encoder
    from the first step, used only for training.

    Args:
        num_classes: object classes; logits have one more, the last being "no object".
        memory_dim: width of the encoder tokens.
        grid_size: the encoder's patch grid (h, w), for the memory's 2-D sin-cos positions.
        num_prefix_tokens: class/register tokens in front of the patch tokens (no position added).
        dim: decoder width.
        depth: decoder layers.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / dim.
        num_queries: object queries (detections per image before top-k).
        query_init: where the query anchors come from: "encoder" (top-scoring patch-token proposals) or
            "learned" (one learned anchor per query).
        dn_groups: denoising groups in training (0: off).
        label_noise: probability that a denoising query's label is replaced by a random class.
        box_noise: denoising box noise, as a fraction of the box size (centre shift and size change).
        drop: dropout in the decoder blocks.
    """

    def __init__(
        self,
        num_classes: int,
        memory_dim: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int = 1,
        dim: int = 256,
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        num_queries: int = 100,
        query_init: Literal["encoder", "learned"] = "encoder",
        dn_groups: int = 5,
        label_noise: float = 0.2,
        box_noise: float = 0.4,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"DetrHead: dim={dim}; expected a multiple of 4 (sin-cos positions)")
        if query_init not in ("encoder", "learned"):
            raise ValueError(f"DetrHead: query_init={query_init!r}; expected 'encoder' or 'learned'")
        if query_init == "encoder" and num_queries > grid_size[0] * grid_size[1]:
            raise ValueError(f"DetrHead: num_queries={num_queries} proposals from {grid_size[0] * grid_size[1]} patch "
                             f"tokens; expected at most that many (or query_init='learned')")
        self.num_classes, self.dim, self.num_queries, self.query_init = num_classes, dim, num_queries, query_init
        self.num_prefix_tokens = num_prefix_tokens
        self.dn_groups, self.label_noise, self.box_noise = dn_groups, label_noise, box_noise
        self.memory_proj = nn.Linear(memory_dim, dim)
        pos = torch.cat([torch.zeros(num_prefix_tokens, dim), sincos_2d_pos_embed(dim, tuple(grid_size))])
        self.register_buffer("memory_pos", pos[None], persistent=False)  # (1, prefix + h*w, dim)
        self.query_content = nn.Embedding(num_queries, dim)
        if query_init == "learned":
            self.query_anchors = nn.Embedding(num_queries, 4)  # box logits (inverse sigmoid of cxcywh)
        else:  # proposals: each patch token predicts a box around its cell, 2 cells wide (logit space)
            self.register_buffer("token_anchors", inverse_sigmoid(_cell_boxes(tuple(grid_size))), persistent=False)
            self.enc_norm = nn.LayerNorm(dim, eps=1e-6)
            self.enc_class = nn.Linear(dim, num_classes + 1)
            self.enc_bbox = PredictionMLP(dim, dim, 4, 3)
            self.dense_class = nn.Linear(dim, num_classes + 1)  # auxiliary one-to-many heads (Co-DETR)
            self.dense_bbox = PredictionMLP(dim, dim, 4, 3)
        self.label_embed = nn.Embedding(num_classes + 1, dim)  # denoising queries; the last row pads
        self.pos_mlp = PredictionMLP(2 * dim, dim, dim, 2)
        self.blocks = nn.ModuleList(
            DecoderBlock(dim, num_heads, mlp_ratio, attn_drop=drop, proj_drop=drop, memory_dim=dim)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.bbox_embed = PredictionMLP(dim, dim, 4, 3)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.query_content.weight, std=0.02)
        nn.init.normal_(self.label_embed.weight, std=0.02)
        if self.query_init == "learned":
            anchors = torch.rand(self.num_queries, 4)  # centres spread over the image, sizes 0.05-0.35
            anchors[:, 2:] = anchors[:, 2:] * 0.3 + 0.05
            self.query_anchors.weight.data.copy_(inverse_sigmoid(anchors))
        # first predictions: the anchors themselves
        for mlp in (self.bbox_embed, getattr(self, "enc_bbox", None), getattr(self, "dense_bbox", None)):
            if mlp is not None:
                nn.init.zeros_(mlp.layers[-1].weight)
                nn.init.zeros_(mlp.layers[-1].bias)

    def forward(self, tokens: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Output:
        """tokens (B, prefix + h*w, memory_dim) -> dict of "pred_logits" (B, Q, K+1), "pred_boxes" (B, Q, 4)
        normalised cxcywh, "aux_outputs" (one such dict per earlier layer), "enc_outputs" (the patch tokens'
        proposals, with query_init="encoder") and, when training with targets and `dn_groups > 0`, "dn" (the
        denoising predictions, see `DenoisingQueries`)."""
        B = tokens.shape[0]
        memory = self.memory_proj(tokens)  # (B, N, dim)
        content = self.query_content.weight.expand(B, -1, -1)  # (B, Q, dim)
        out: Output = {}
        if self.query_init == "learned":
            anchors = self.query_anchors.weight.expand(B, -1, -1)  # (B, Q, 4)
        else:
            anchors, out["enc_outputs"] = self.select_queries(memory[:, self.num_prefix_tokens :])
        memory = memory + self.memory_pos
        dn = self.denoising_queries(targets) if self.training and targets is not None and self.dn_groups > 0 else None
        mask = None
        if dn is not None:
            content, anchors, mask = (torch.cat([dn.content, content], 1), torch.cat([dn.anchors, anchors], 1),
                                      dn.attn_mask)
        logits, boxes = self._decode(content, anchors, memory, mask)  # (L, B, T, K+1), (L, B, T, 4)
        n_dn = dn.length if dn is not None else 0
        out.update({"pred_logits": logits[-1, :, n_dn:], "pred_boxes": boxes[-1, :, n_dn:]})
        # indexed, not iterated: iterating a tensor traces as `unbind`, which a .pt2 program with one decoder layer
        # (no auxiliary outputs) cannot load back (torch.export serialises an unbind into no tensors badly)
        out["aux_outputs"] = [{"pred_logits": logits[i, :, n_dn:], "pred_boxes": boxes[i, :, n_dn:]}
                              for i in range(logits.shape[0] - 1)]
        if dn is not None:
            out["dn"] = {"pred_logits": logits[:, :, :n_dn], "pred_boxes": boxes[:, :, :n_dn], "labels": dn.labels,
                         "boxes": dn.boxes, "valid": dn.valid, "groups": dn.groups}
        return out

    def select_queries(self, patches: torch.Tensor) -> tuple[torch.Tensor, Output]:
        """Patch tokens (B, N, dim) -> anchors (B, Q, 4) in logit space: the boxes of the Q tokens whose best
        object class is most probable (detached: the decoder refines them), and every token's proposal."""
        h = self.enc_norm(patches)
        logits = self.enc_class(h)  # (B, N, K+1)
        boxes = (self.token_anchors + self.enc_bbox(h)).sigmoid()  # (B, N, 4)
        score = logits.softmax(-1)[..., :-1].amax(-1)  # (B, N)
        top = score.topk(self.num_queries, dim=1).indices  # (B, Q)
        chosen = boxes.gather(1, top[..., None].expand(-1, -1, 4))
        # the same tokens through a second pair of heads, trained one-to-many (see SetCriterion.dense_losses)
        dense = {"pred_logits": self.dense_class(h), "pred_boxes": (self.token_anchors + self.dense_bbox(h)).sigmoid(),
                 "centres": self.token_anchors[:, :2].sigmoid()}
        return inverse_sigmoid(chosen.detach()), {"pred_logits": logits, "pred_boxes": boxes, "dense": dense}

    def _decode(self, x: torch.Tensor, anchors: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None):
        ref = anchors.sigmoid()  # (B, T, 4) current box of each query
        all_logits, all_boxes = [], []
        for block in self.blocks:
            pos = self.pos_mlp(box_sine_embed(ref, self.dim))  # (B, T, dim)
            # the box position enters every sub-layer of the block but not the residual stream (DAB-DETR
            # re-adds query positions at each layer; the pre-norm block has a single input, hence +pos / -pos)
            x = block(x + pos, memory, attn_mask=mask) - pos
            h = self.norm(x)
            box = (inverse_sigmoid(ref) + self.bbox_embed(h)).sigmoid()
            all_logits.append(self.class_embed(h))
            all_boxes.append(box)
            ref = box.detach()  # refinement: the next layer starts from this box (Deformable DETR)
        return torch.stack(all_logits), torch.stack(all_boxes)

    def denoising_queries(self, targets: list[dict[str, torch.Tensor]]) -> DenoisingQueries | None:
        """Noised ground truth as extra queries: labels flipped with probability `label_noise`, centres
        shifted and sizes changed by up to `box_noise` of the box size. None when no image has targets."""
        sizes = [len(t["labels"]) for t in targets]
        pad, groups, device = max(sizes, default=0), self.dn_groups, self.query_content.weight.device
        if pad == 0:
            return None
        B = len(targets)
        labels = torch.full((B, pad), self.num_classes, dtype=torch.int64, device=device)
        boxes = torch.full((B, pad, 4), 0.5, device=device)
        valid = torch.zeros(B, pad, dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            labels[i, : sizes[i]], boxes[i, : sizes[i]], valid[i, : sizes[i]] = t["labels"], t["boxes"], True
        labels, boxes, valid = labels.repeat(1, groups), boxes.repeat(1, groups, 1), valid.repeat(1, groups)
        noisy_labels = torch.where(
            (torch.rand_like(boxes[..., 0]) < self.label_noise) & valid,
            torch.randint_like(labels, self.num_classes), labels,
        )
        wh = boxes[..., 2:].repeat(1, 1, 2)
        shift = ((torch.rand_like(boxes) * 2 - 1) * self.box_noise * wh
                 * torch.tensor([0.5, 0.5, 1.0, 1.0], device=device))
        noisy = (boxes + shift).clamp(1e-3, 1.0)
        T = groups * pad + self.num_queries
        mask = torch.ones(T, T, dtype=torch.bool, device=device)
        mask[groups * pad :, : groups * pad] = False  # learned queries do not see the denoising queries
        for g in range(groups):
            rows = slice(g * pad, (g + 1) * pad)
            mask[rows, : groups * pad] = False
            mask[rows, rows] = True  # a group sees itself and the learned queries only
        return DenoisingQueries(self.label_embed(noisy_labels), inverse_sigmoid(noisy), labels, boxes, valid, mask,
                                groups, pad)
