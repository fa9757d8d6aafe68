"""2-D rotary position embeddings (RoPE) for a ViT's patch grid: RoFormer's rotation (Su et al. 2021) on two axes,
as in Heo et al. 2024, "Rotary Position Embedding for Vision Transformer" (axial and mixed), EVA-02
(Fang et al. 2024) and DINOv3 (Siméoni et al. 2025). Numerically the same as timm's rope modules (timm/layers/
pos_embed_sincos.py), whose parameter and buffer names it keeps, so the `rope.*` keys of a timm `Eva` load strictly.

RoPE splits each query/key head into head_dim/2 channel pairs and rotates pair j of the token at grid position p
by an angle θ_j(p), linear in p. A rotated score q·k then depends on the positions only through p_q - p_k.
Three ways to pick the angles (`RotaryEmbedding(kind=...)`):

- "axial" (timm `RotaryEmbeddingCat`; EVA-02, RoPE-Axial): half the pairs follow the row, half the column,
  θ = coord * temperature ** (-i / (head_dim/4)), i < head_dim/4; coordinates are patch indices (+ `grid_offset`),
  rescaled onto `ref_grid` when that is given (EVA-02: a grid other than the pre-training one spans the same range).
- "mixed" (timm `RotaryEmbeddingMixed`; RoPE-Mixed): θ = x * f_x + y * f_y with learned frequencies `freqs`
  (2, depth, heads, head_dim/2), one set per block and head, so `forward` returns one embedding per block.
- "dinov3" (timm `RotaryEmbeddingDinoV3`): the axial scheme on centred coordinates normalised to [-1, 1] per axis
  ((i + 0.5 + grid_offset) / size * 2 - 1), with periods temperature ** (2i / (head_dim/2)): θ = 2π coord / period.
  Resolution-independent: the same picture at another size gets the same angles.

Which arguments reproduce which timm model: `TIMM_ROPE_CONFIGS` in tests/test_rope.py (EVA-02: "axial", ref_grid
(16, 16); `vit_*_rope_*`: temperature 100 (axial) or 10 (mixed), grid_indexing "xy"; DINOv3: "dinov3", temperature
100, rotate_half).

The embedding: `emb[..., 2j] = cos θ_j`, `emb[..., 2j + 1] = sin θ_j`, i.e. the unit complex numbers e^{iθ_j} as
real pairs, shape (N, head_dim) (axial, dinov3) or (depth, heads, N, head_dim) (mixed). Half the size of timm's
[sin | cos] layout, and the same whichever channel pairing the model uses: `rotate_half` (DINOv3, GPT-NeoX style:
channel j pairs with j + head_dim/2) or interleaved pairs (2j, 2j+1; EVA-02, RoPE-ViT) is chosen when applying
(`apply_rope(..., rotate_half=rope.rotate_half)`), as in timm's `apply_rot_embed_cat(half=...)`.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

RopeKind = Literal["axial", "mixed", "dinov3"]
_KINDS = ("axial", "mixed", "dinov3")
_CACHE_SIZE = 16  # grids kept per module; a dynamic-size run sees few distinct ones


class RotaryEmbedding(nn.Module):
    """The rotary embedding of a (H, W) patch grid for every attention layer of a ViT.

    Args:
        dim: the model's embed_dim; each head gets head_dim = dim / num_heads channels (a multiple of 4).
        num_heads: attention heads.
        kind: "axial", "mixed" or "dinov3" (see the module docstring).
        depth: number of blocks; "mixed" learns frequencies for each.
        temperature: the frequency base (timm's `rope_temperature`).
        grid_indexing: "ij" puts the row coordinate on the first frequency half, "xy" the column (timm's name).
        ref_grid: "axial"/"mixed": rescale index coordinates so that any grid spans this one (EVA-02's
            `ref_feat_shape`); None keeps plain patch indices.
        grid_offset: added to each index coordinate (for "dinov3" before normalising).
        rotate_half: the channel pairing of the heads, kept here as `self.rotate_half` for `apply_rope`.
        shift_coords, jitter_coords, rescale_coords: training-time coordinate augmentation (DINOv3; timm's
            `rope_*_coords`): a uniform shift in [-s, s] per axis, a log-uniform scale in [1/J, J] per axis,
            then one in [1/R, R] for both, drawn once per call. Only in training mode; eval is deterministic.

    `forward(grid)` returns the embedding for that grid, any size. Deterministic embeddings are cached per
    (grid, device); "mixed" recomputes while its frequencies need gradients, and caches (keyed by the parameter's
    version, so an optimiser step or a load invalidates it) otherwise. `per_block` is True for "mixed": index the
    result `[i]` for block i.

    State dict: only "mixed" has an entry, the parameter `freqs` (timm's name). "axial" keeps its frequencies in
    the non-persistent buffer `bands`, "dinov3" its periods in `periods`, as timm does.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kind: RopeKind = "axial",
        depth: int = 1,
        temperature: float = 10000.0,
        grid_indexing: Literal["ij", "xy"] = "ij",
        ref_grid: tuple[int, int] | None = None,
        grid_offset: float = 0.0,
        rotate_half: bool = False,
        shift_coords: float | None = None,
        jitter_coords: float | None = None,
        rescale_coords: float | None = None,
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"RotaryEmbedding: kind={kind!r}; expected one of {list(_KINDS)}")
        if dim % num_heads or (dim // num_heads) % 4:
            raise ValueError(f"RotaryEmbedding: dim={dim}, num_heads={num_heads}; expected a head_dim dim/num_heads "
                             "that is a multiple of 4 (two axes, pairs of channels)")
        if grid_indexing not in ("ij", "xy"):
            raise ValueError(f"RotaryEmbedding: grid_indexing={grid_indexing!r}; expected 'ij' or 'xy'")
        if ref_grid is not None and kind == "dinov3":
            raise ValueError("RotaryEmbedding: ref_grid applies to index coordinates ('axial', 'mixed'); 'dinov3' "
                             "coordinates are already normalised to the grid")
        if kind == "mixed" and depth < 1:
            raise ValueError(f"RotaryEmbedding: depth={depth}; 'mixed' needs one frequency set per block (>= 1)")
        if temperature <= 0:
            raise ValueError(f"RotaryEmbedding: temperature={temperature}; expected > 0")
        _check_augment(shift_coords, jitter_coords, rescale_coords)
        self.kind = kind
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.depth = depth
        self.temperature = float(temperature)
        self.grid_indexing = grid_indexing
        self.ref_grid = None if ref_grid is None else (int(ref_grid[0]), int(ref_grid[1]))
        self.grid_offset = float(grid_offset)
        self.rotate_half = rotate_half
        self.shift_coords, self.jitter_coords, self.rescale_coords = shift_coords, jitter_coords, rescale_coords
        self.per_block = kind == "mixed"
        self._cache: dict[tuple, torch.Tensor] = {}
        if kind == "mixed":
            self.freqs = nn.Parameter(_init_mixed_freqs(self.head_dim, depth, num_heads, self.temperature))
        else:
            name = "bands" if kind == "axial" else "periods"
            self.register_buffer(name, self._frequencies(), persistent=False)

    @property
    def augment(self) -> bool:
        """Whether coordinates are augmented now (training mode with an augmentation set)."""
        return self.training and any(a is not None for a in (self.shift_coords, self.jitter_coords,
                                                              self.rescale_coords))

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        """(H, W) patch grid -> (N = H*W, head_dim) embedding, (depth, heads, N, head_dim) for "mixed"; float32."""
        if torch.compiler.is_exporting():  # a traced graph takes any grid: build the embedding in it, uncached
            return self._embed(tuple(grid))
        grid = (int(grid[0]), int(grid[1]))
        key = self._cache_key(grid)
        if key is None:
            return self._embed(grid)
        emb = self._cache.get(key)
        if emb is None:
            # Built outside inference mode: a cache filled under torch.inference_mode() must still serve training.
            with torch.inference_mode(False), torch.no_grad():
                emb = self._embed(grid)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = emb
        return emb

    def no_weight_decay(self) -> set[str]:
        """Learned frequencies are not decayed (timm, RoPE-Mixed)."""
        return {"freqs"} if self.kind == "mixed" else set()

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, head_dim={self.head_dim}, num_heads={self.num_heads}, depth={self.depth}, "
                f"temperature={self.temperature}, grid_indexing={self.grid_indexing!r}, ref_grid={self.ref_grid}, "
                f"grid_offset={self.grid_offset}, rotate_half={self.rotate_half}")

    def _cache_key(self, grid: tuple[int, int]) -> tuple | None:
        # Compiled graphs build the embedding inline (no Python-side state to guard on); augmented ones differ per call.
        if torch.compiler.is_compiling() or self.augment:
            return None
        if self.kind != "mixed":
            return grid, self._buffer().device
        if torch.is_grad_enabled() and self.freqs.requires_grad:
            return None
        return grid, self.freqs.device, self.freqs.data_ptr(), self.freqs._version

    def _buffer(self) -> torch.Tensor:
        return self.freqs if self.kind == "mixed" else (self.bands if self.kind == "axial" else self.periods)

    def _frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        """(head_dim/4,) float32: angular frequencies ("axial") or periods ("dinov3"), computed as timm does."""
        n = self.head_dim // 4
        if self.kind == "axial":
            return 1.0 / self.temperature ** (torch.arange(n, dtype=torch.float32, device=device) / n)
        return self.temperature ** (2.0 * torch.arange(n, dtype=torch.float32, device=device) / (self.head_dim // 2))

    def _embed(self, grid: tuple[int, int]) -> torch.Tensor:
        coords = self._coords(grid, self._buffer().device)  # (N, 2)
        if self.augment:
            coords = _augment_coords(coords, self.shift_coords, self.jitter_coords, self.rescale_coords)
        if self.kind == "axial":
            angles = (coords[:, :, None] * self.bands).flatten(1)  # (N, 2, head_dim/4) -> (N, head_dim/2)
        elif self.kind == "dinov3":
            angles = (2 * math.pi * coords[:, :, None] / self.periods).flatten(1)
        else:
            f = self.freqs.float()  # (2, depth, heads, head_dim/2)
            angles = coords[:, 0, None] * f[0][..., None, :] + coords[:, 1, None] * f[1][..., None, :]
        return torch.stack([angles.cos(), angles.sin()], dim=-1).flatten(-2)  # (..., N, head_dim/2, 2) -> (..., N, hd)

    def _coords(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(H*W, 2) float32 coordinates in row-major token order; channels (row, col) for "ij", (col, row) for "xy"."""
        if self.kind == "dinov3":
            t = [(torch.arange(0.5, s, dtype=torch.float32, device=device) + self.grid_offset) / s for s in grid]
        else:
            t = [torch.arange(s, dtype=torch.float32, device=device) + self.grid_offset for s in grid]
            if self.ref_grid is not None:
                t = [c / s * r for c, s, r in zip(t, grid, self.ref_grid)]
        rows, cols = torch.meshgrid(t[0], t[1], indexing="ij")  # (H, W) each
        axes = (rows, cols) if self.grid_indexing == "ij" else (cols, rows)
        coords = torch.stack(axes, dim=-1).reshape(-1, 2)
        return 2.0 * coords - 1.0 if self.kind == "dinov3" else coords  # dinov3: [0, 1] -> [-1, 1]

    def _apply(self, fn, *args, **kwargs):
        # .to(device) leaves stale cache entries behind, .half() would round the frequencies: rebuild both.
        super()._apply(fn, *args, **kwargs)
        self._cache.clear()
        if self.kind != "mixed" and self._buffer().dtype != torch.float32:
            name = "bands" if self.kind == "axial" else "periods"
            self.register_buffer(name, self._frequencies(self._buffer().device), persistent=False)
        return self


def apply_rope(
    x: torch.Tensor, emb: torch.Tensor, num_prefix_tokens: int = 0, rotate_half: bool = False
) -> torch.Tensor:
    """Rotate queries or keys x (B, heads, N, head_dim) by a `RotaryEmbedding` output (one block's, for "mixed").

    The first `num_prefix_tokens` rows (class, register tokens) have no grid position and pass unchanged; row
    num_prefix_tokens + n gets emb row n. x may hold only the first rows of the sequence (queries of the first
    tokens): a x of at most num_prefix_tokens rows is returned as it is. `rotate_half` pairs channel j with
    j + head_dim/2 (DINOv3) instead of 2j with 2j+1; pass the module's `rotate_half`. Computed in float32,
    returned in x's dtype. emb may carry leading dims that broadcast against (B, heads).
    """
    n = x.shape[-2] - num_prefix_tokens
    if n <= 0:
        return x
    if n > emb.shape[-2] or emb.shape[-1] != x.shape[-1]:
        raise ValueError(f"apply_rope: x of shape {tuple(x.shape)} with {num_prefix_tokens} prefix tokens; the "
                         f"embedding {tuple(emb.shape)} covers {emb.shape[-2]} positions of width {emb.shape[-1]}")
    emb = emb[..., :n, :]
    if num_prefix_tokens:
        # The identity rotation (cos 1, sin 0) for the prefix: one rotation over all rows, no slicing and re-joining.
        identity = emb.new_tensor([1.0, 0.0]).repeat(x.shape[-1] // 2)
        emb = torch.cat([identity.expand(*emb.shape[:-2], num_prefix_tokens, -1), emb], dim=-2)
    if rotate_half or torch.compiler.is_compiling():
        return _rotate_real(x, emb, rotate_half)
    return _rotate_complex(x, emb)


def _rotate_complex(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs, eager: one complex multiply (x_2j + i x_2j+1) * e^{iθ_j} over x's own memory, several
    times faster on CPU than timm's real-arithmetic rotation (which copies x into a rotated partner first)."""
    rot = torch.view_as_complex(emb.float().unflatten(-1, (-1, 2)).contiguous())  # (..., N, head_dim/2)
    pairs = x.float().unflatten(-1, (-1, 2))
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
        # view_as_complex needs whole (re, im) pairs in memory; contiguous() would keep an odd storage offset
        pairs = pairs.clone(memory_format=torch.contiguous_format)
    return torch.view_as_real(torch.view_as_complex(pairs) * rot).flatten(-2).to(x.dtype)


def _rotate_real(x: torch.Tensor, emb: torch.Tensor, rotate_half: bool) -> torch.Tensor:
    """x * cos + partner(x) * ±sin, the partner of each channel being the other one of its pair. Used for
    rotated halves (where pairs are not adjacent in memory, so there is no complex view) and under torch.compile
    (Inductor fuses real arithmetic into one kernel, but not complex). The sign goes into sin, not into a negated
    copy of x."""
    cos, sin = emb.float().unflatten(-1, (-1, 2)).unbind(-1)  # (..., N, head_dim/2) each
    xf = x.float()
    if rotate_half:
        cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)
        partner = xf.roll(x.shape[-1] // 2, dims=-1)  # channel j meets j + head_dim/2 and back
    else:
        cos, sin = cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)
        partner = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x_2j+1, x_2j)
    return torch.addcmul(xf * cos, partner, sin).to(x.dtype)


def _init_mixed_freqs(head_dim: int, depth: int, num_heads: int, temperature: float) -> torch.Tensor:
    """RoPE-Mixed's initial frequencies (Heo et al. 2024; timm `init_random_2d_freqs`): the axial magnitudes,
    turned by a random angle per block and head; (2, depth, heads, head_dim/2), [0] multiplies x, [1] y."""
    mag = 1.0 / temperature ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim)  # (head_dim/4,)
    turn = torch.rand(depth, num_heads, 1) * 2 * torch.pi
    fx = torch.cat([mag * torch.cos(turn), mag * torch.cos(turn + torch.pi / 2)], dim=-1)
    fy = torch.cat([mag * torch.sin(turn), mag * torch.sin(turn + torch.pi / 2)], dim=-1)
    return torch.stack([fx, fy], dim=0)


def _check_augment(shift: float | None, jitter: float | None, rescale: float | None) -> None:
    for name, value, low in (("shift_coords", shift, 0.0), ("jitter_coords", jitter, 1.0),
                             ("rescale_coords", rescale, 1.0)):
        if value is not None and not (math.isfinite(value) and value >= low):
            raise ValueError(f"RotaryEmbedding: {name}={value}; expected None or a finite number >= {low}")


def _augment_coords(coords: torch.Tensor, shift: float | None, jitter: float | None,
                    rescale: float | None) -> torch.Tensor:
    """DINOv3's training-time RoPE augmentation of (N, 2) coordinates, drawn in timm's (and DINOv3's) order."""
    if shift is not None:
        coords = coords + torch.empty(2, device=coords.device).uniform_(-shift, shift)
    if jitter is not None:
        coords = coords * torch.empty(2, device=coords.device).uniform_(-math.log(jitter), math.log(jitter)).exp()
    if rescale is not None:
        coords = coords * torch.empty(1, device=coords.device).uniform_(-math.log(rescale), math.log(rescale)).exp()
    return coords
