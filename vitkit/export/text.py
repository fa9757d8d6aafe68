"""Exportable graphs of the text tasks, and the greedy loop that runs an exported decoder.

A Seq2Seq or ImageCaptioner model becomes two graphs. The *encoder* turns source ids (B, S) or pixels (B, 3, H, W)
into the decoder's cross-attention keys/values, `cross_k`/`cross_v` (layers, B, heads, M, head_dim), and a
`memory_mask` (B, 1, 1, M), True where a memory position may be attended. The *decoder* computes one token:
`token` (B, 1) at position `pos` (0-d int64) with the self-attention cache `self_k`/`self_v`
(layers, B, heads, max_len, head_dim) as inputs and outputs: it returns that step's `logits` (B, vocab) and the cache
with the step's keys/values written at slot `pos` (`vitkit.nn.StaticKVCache`: fixed shapes, so one traced graph
serves every step). `greedy_decode` is the loop over it, as `Seq2SeqTransformer.generate(beam_size=1)` decodes.
A VisualQA model is one graph, (pixels, question ids) -> answer logits.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from ..errors import ConfigError
from ..nn import KVCache, StaticKVCache, padding_mask
from .graphs import GraphSpec, allow_any_size, example_pixels

ENCODER_OUTPUTS = ["cross_k", "cross_v", "memory_mask"]
DECODER_INPUTS = ["token", "pos", "self_k", "self_v", "cross_k", "cross_v", "memory_mask"]
DECODER_OUTPUTS = ["logits", "new_self_k", "new_self_v"]


def cross_kv(decoder: nn.Module, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every decoder block's cross-attention keys and values of a memory, stacked: (layers, B, heads, M, head_dim)."""
    kv = [blk.cross_attn.memory_kv(memory) for blk in decoder.blocks]
    return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])


class SourceEncoderGraph(nn.Module):
    """Seq2Seq source ids (B, S), padded with `pad_id` -> cross_k, cross_v, memory_mask (padding not attended)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory, mask = self.model.encode(src)
        return *cross_kv(self.model.decoder, memory), mask


class ImageEncoderGraph(nn.Module):
    """Captioner pixels (B, 3, H, W) -> cross_k, cross_v, memory_mask (every image token attended)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory = self.model.encode(pixels)
        mask = padding_mask(torch.zeros(memory.shape[:2], dtype=torch.bool, device=memory.device))
        return *cross_kv(self.model.decoder, memory), mask


class DecoderStepGraph(nn.Module):
    """One greedy step of a `TextDecoder`: (token, pos, self_k, self_v, cross_k, cross_v, memory_mask) ->
    (logits, new_self_k, new_self_v); see the module docstring for the shapes."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, token, pos, self_k, self_v, cross_k, cross_v, memory_mask):
        caches = [(StaticKVCache(self_k[i], self_v[i], pos), KVCache(cross_k[i], cross_v[i]))
                  for i in range(len(self.decoder.blocks))]
        logits = self.decoder(token, None, memory_mask, caches)[:, -1]  # (B, vocab)
        return logits, torch.stack([s.k for s, _ in caches]), torch.stack([s.v for s, _ in caches])


class VQAGraph(nn.Module):
    """VisualQA pixels (B, 3, H, W) and question ids (B, Q) padded with `pad_id` -> answer logits (B, answers)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        return self.model(pixels, question)


# --------------------------------------------------------------------------------------------- specs
@dataclass
class TextExportSpec:
    """What `vitkit export` writes for a text task: its graphs and the metadata the runtime needs."""

    task: str  # "seq2seq" | "captioning" | "vqa"
    model: nn.Module  # an eval-mode copy of the task's model: what the graphs run, and the parity reference
    graphs: dict[str, GraphSpec]
    image_size: tuple[int, int] | None = None  # captioning and VQA: the encoder's input size
    patch_size: tuple[int, int] | None = None
    extra_meta: dict = field(default_factory=dict)


def decoder_meta(model: nn.Module) -> dict:
    """What the greedy loop needs to know of a text decoder."""
    dec = model.decoder
    attn = dec.blocks[0].self_attn
    s = model.special
    return {"layers": len(dec.blocks), "heads": attn.num_heads, "head_dim": attn.head_dim, "max_len": dec.max_len,
            "pad_id": s.pad, "bos_id": s.bos, "eos_id": s.eos}


def example_ids(batch: int, length: int, vocab: int, specials: tuple[int, ...], pad: int, seed: int) -> torch.Tensor:
    """Random non-special ids (batch, length), the last row right-padded to about half its length."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([i for i in range(vocab) if i not in specials])
    ids = allowed[torch.randint(len(allowed), (batch, length), generator=g)]
    if batch > 1 and length > 1:
        ids[-1, (length + 1) // 2:] = pad
    return ids


def build_text_spec(task: nn.Module, dynamic: set[str]) -> TextExportSpec:
    """The graphs of a Seq2Seq, ImageCaptioner or VisualQA task (a copy: the task is left as it was). Text lengths
    (source, question, memory) are always dynamic; `dynamic` may add the batch and, with an image, its size."""
    name = type(task).__name__
    model = copy.deepcopy(task.model).eval()
    batch = Dim("batch", min=1, max=4096) if "batch" in dynamic else None
    if name == "Seq2Seq":
        if "size" in dynamic:
            raise ConfigError("--dynamic size: a Seq2Seq model takes no image (its source length is always dynamic); "
                              "use --dynamic batch")
        image_size = patch_size = None
    else:
        allow_any_size(model.encoder, "size" in dynamic, name)
        image_size, patch_size = tuple(model.encoder.img_size), tuple(model.encoder.patch_embed.patch_size)
    pixel_axes = {} if batch is None else {0: batch}
    if "size" in dynamic:
        pixel_axes[2] = patch_size[0] * Dim("patches_h", min=1, max=1024)
        pixel_axes[3] = patch_size[1] * Dim("patches_w", min=1, max=1024)

    def axes(**named) -> dict:  # {axis: Dim}, without the axes left static
        return {int(k[1:]): d for k, d in named.items() if d is not None}

    hp = task.hparams
    specials = (hp.pad_id, hp.bos_id, hp.eos_id)
    if name == "VisualQA":
        max_len = model.pos.max_len
        inputs = {"pixels": example_pixels(image_size, patch_size, 2),
                  "question": example_ids(2, min(6, max_len), model.embed.vocab_size, specials, hp.pad_id, seed=2)}
        shapes = {"pixels": pixel_axes, "question": axes(a0=batch, a1=Dim("text", min=1, max=max_len))}
        graph = GraphSpec(VQAGraph(model), inputs, ["logits"], shapes)
        return TextExportSpec("vqa", model, {"model": graph}, image_size, patch_size,
                              {"pad_id": hp.pad_id, "max_len": max_len})
    if name == "Seq2Seq":
        src = example_ids(2, min(8, model.max_len), model.vocab_size, specials, hp.pad_id, seed=2)
        encoder = GraphSpec(SourceEncoderGraph(model), {"src": src}, ENCODER_OUTPUTS,
                            {"src": axes(a0=batch, a1=Dim("text", min=1, max=model.max_len))})
    else:
        encoder = GraphSpec(ImageEncoderGraph(model), {"pixels": example_pixels(image_size, patch_size, 2)},
                            ENCODER_OUTPUTS, {"pixels": pixel_axes})
    dec = decoder_meta(model)
    with torch.no_grad():
        cross_k, cross_v, mask = encoder.module(*encoder.inputs.values())
    L, B, H, _, hd = cross_k.shape
    cache = torch.zeros(L, B, H, dec["max_len"], hd)
    memory = Dim("memory", min=1, max=65536)
    step = {"token": torch.full((B, 1), dec["bos_id"]), "pos": torch.tensor(1), "self_k": cache,
            "self_v": cache.clone(), "cross_k": cross_k, "cross_v": cross_v, "memory_mask": mask}
    shapes = {"token": axes(a0=batch), "pos": {}, "self_k": axes(a1=batch), "self_v": axes(a1=batch),
              "cross_k": axes(a1=batch, a3=memory), "cross_v": axes(a1=batch, a3=memory),
              "memory_mask": axes(a0=batch, a3=memory)}
    graphs = {"encoder": encoder, "decoder": GraphSpec(DecoderStepGraph(model.decoder), step, DECODER_OUTPUTS, shapes)}
    kind = "seq2seq" if name == "Seq2Seq" else "captioning"
    return TextExportSpec(kind, model, graphs, image_size, patch_size, {"decoder": dec})


# --------------------------------------------------------------------------------------------- decoding
StepFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def greedy_decode(encoded: dict[str, np.ndarray], step: StepFn, dec: dict, max_new_tokens: int | None = None) -> \
        tuple[np.ndarray, np.ndarray]:
    """Greedy decoding over an exported decoder step, as `generate(beam_size=1)`: BOS first; padding and BOS are
    never generated; a finished row continues with padding; stops when every row has produced EOS or after
    `max_new_tokens` (default max_len - 1). Returns ids (B, L) without BOS and each step's logits (B, L, vocab)."""
    max_new = max_new_tokens or dec["max_len"] - 1
    if not 1 <= max_new < dec["max_len"]:
        raise ValueError(f"max_new_tokens={max_new}; expected 1..{dec['max_len'] - 1} (the decoder's max_len "
                         f"{dec['max_len']} includes the start token)")
    k = encoded["cross_k"]
    B = k.shape[1]
    cache = np.zeros((dec["layers"], B, dec["heads"], dec["max_len"], dec["head_dim"]), np.float32)
    feeds = {"token": np.full((B, 1), dec["bos_id"], np.int64), "self_k": cache, "self_v": cache.copy(),
             "cross_k": k, "cross_v": encoded["cross_v"], "memory_mask": encoded["memory_mask"]}
    done = np.zeros(B, bool)
    ids, logits = [], []
    for t in range(max_new):
        out = step({**feeds, "pos": np.asarray(t, np.int64)})
        logits.append(out["logits"])
        scores = out["logits"].astype(np.float64).copy()
        scores[:, [dec["pad_id"], dec["bos_id"]]] = -np.inf
        nxt = np.where(done, dec["pad_id"], scores.argmax(-1)).astype(np.int64)
        ids.append(nxt)
        done |= nxt == dec["eos_id"]
        feeds.update(token=nxt[:, None], self_k=out["new_self_k"], self_v=out["new_self_v"])
        if done.all():
            break
    return np.stack(ids, 1), np.stack(logits, 1)


# --------------------------------------------------------------------------------------------- parity
def parity_cases(spec: TextExportSpec, task, dynamic: set[str]) -> list[tuple[str, tuple[torch.Tensor, ...], bool]]:
    """(label, inputs, at the trained size) for the parity check: a batch of 2 and, where the batch or the image
    size is dynamic, a batch of 3 and/or a larger image; text inputs also change length (always dynamic)."""
    hp, big = task.hparams, "batch" in dynamic
    specials = (hp.pad_id, hp.bos_id, hp.eos_id)
    grow = 1 if "size" in dynamic else 0
    cases = []
    for batch, g, seed in ((2, 0, 3), (3 if big else 2, grow, 4)):
        if spec.task == "seq2seq":
            n = min(spec.model.max_len, 8 + 5 * (seed - 3))
            inputs = (example_ids(batch, n, spec.model.vocab_size, specials, hp.pad_id, seed),)
        else:
            inputs = (example_pixels(spec.image_size, spec.patch_size, batch, g),)
            if spec.task == "vqa":
                n = min(spec.extra_meta["max_len"], 6 + 3 * (seed - 3))
                inputs += (example_ids(batch, n, spec.model.embed.vocab_size, specials, hp.pad_id, seed),)
        cases.append(("x".join(map(str, inputs[0].shape)), inputs, g == 0))
    return cases[:1] if not dynamic else cases


@torch.no_grad()
def check_text_parity(spec: TextExportSpec, task, exported, dynamic: set[str]) -> tuple[list[dict], list[str]]:
    """Exported vs eager per case: VQA's answer logits; a text model's greedy tokens (must be identical to
    `generate(beam_size=1)`) and every step's logits against the eager decoder run on the whole decoded prefix at
    once (no cache). Returns the rows and the failures above tolerance left to the caller (None here)."""
    rows, mismatched = [], []
    for label, inputs, native in parity_cases(spec, task, dynamic):
        model = task.model if native else spec.model
        if spec.task == "vqa":
            got = exported.run(*(x.numpy() for x in inputs))["logits"]
            rows.append({"input": label, "output": "logits", "max_abs_diff": _diff(got, model(*inputs))})
            continue
        ids, logits = exported.generate(inputs[0].numpy())
        want = model.generate(inputs[0], beam_size=1)
        same = ids.shape == tuple(want.shape) and bool((ids == want.numpy()).all())
        if spec.task == "seq2seq":
            memory, mask = model.encode(inputs[0])
        else:
            memory, mask = model.encode(inputs[0]), None
        prefix = torch.cat([torch.full((len(ids), 1), model.special.bos), torch.from_numpy(ids[:, :-1])], 1)
        rows.append({"input": label, "output": "logits", "max_abs_diff": _diff(logits, model.decoder(prefix, memory,
                                                                                                     mask))})
        rows.append({"input": label, "output": "tokens", "identical": same, "length": int(ids.shape[1])})
        if not same:
            mismatched.append(f"greedy tokens at {label} differ from generate(beam_size=1)")
    return rows, mismatched


def _diff(got: np.ndarray, want: torch.Tensor) -> float:
    want = want.numpy()
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0
