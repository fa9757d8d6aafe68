"""Exportable graphs of the text tasks, and the greedy loop that runs an exported decoder.

A Seq2Seq or ImageCaptioner model becomes two graphs. The *encoder* turns source ids `src` (B, S) or `pixels`
(B, 3, H, W) into each decoder layer's cross-attention keys/values `cross_k.<i>`/`cross_v.<i>` (B, heads, M, head_dim)
and a `memory_mask` (B, 1, 1, M), True where a memory position may be attended. The *decoder* computes one token:
`token` (B, 1) at position `pos` (0-d int64), with each layer's self-attention cache `self_k.<i>`/`self_v.<i>`
(B, heads, max_len, head_dim) as inputs and outputs: it returns that step's `logits` (B, vocab) and the caches with
the step's keys/values written at slot `pos` (`new_self_k.<i>`/`new_self_v.<i>`; `vitkit.nn.StaticKVCache`: fixed
shapes, so one traced graph serves every step). One input per layer, not one stacked tensor: splitting and
re-stacking the caches took a quarter of a step in onnxruntime. `greedy_decode` is the loop over the step, as
`Seq2SeqTransformer.generate(beam_size=1)` decodes. A VisualQA model is one graph, (pixels, question) -> logits.
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
from ..nn import KVCache, StaticKVCache, padding_mask, to_2tuple
from .graphs import GraphSpec, allow_any_size, example_pixels


def layer_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}" for i in range(layers)]


def encoder_outputs(layers: int) -> list[str]:
    return [*layer_names("cross_k", layers), *layer_names("cross_v", layers), "memory_mask"]


def decoder_inputs(layers: int) -> list[str]:
    return ["token", "pos", "memory_mask", *layer_names("self_k", layers), *layer_names("self_v", layers),
            *layer_names("cross_k", layers), *layer_names("cross_v", layers)]


def decoder_outputs(layers: int) -> list[str]:
    return ["logits", *layer_names("new_self_k", layers), *layer_names("new_self_v", layers)]


def cross_kv(decoder: nn.Module, memory: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder block's cross-attention keys, then values, of a memory: 2 x layers (B, heads, M, head_dim)."""
    kv = [blk.cross_attn.memory_kv(memory) for blk in decoder.blocks]
    return [k for k, _ in kv] + [v for _, v in kv]


class SourceEncoderGraph(nn.Module):
    """Seq2Seq source ids (B, S), padded with `pad_id` -> cross_k.*, cross_v.*, memory_mask (padding not attended)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, mask = self.model.encode(src)
        return *cross_kv(self.model.decoder, memory), mask


class ImageEncoderGraph(nn.Module):
    """Captioner pixels (B, 3, H, W) -> cross_k.*, cross_v.*, memory_mask (every image token attended)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = self.model.encode(pixels)
        mask = padding_mask(torch.zeros(memory.shape[:2], dtype=torch.bool, device=memory.device))
        return *cross_kv(self.model.decoder, memory), mask


class DecoderStepGraph(nn.Module):
    """One greedy step of a `TextDecoder`: (token, pos, memory_mask, self_k.*, self_v.*, cross_k.*, cross_v.*) ->
    (logits, new_self_k.*, new_self_v.*); see the module docstring for the shapes."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, token, pos, memory_mask, *caches):
        L = len(self.decoder.blocks)
        sk, sv, ck, cv = (caches[i * L:(i + 1) * L] for i in range(4))
        layers = [(StaticKVCache(sk[i], sv[i], pos), KVCache(ck[i], cv[i])) for i in range(L)]
        logits = self.decoder(token, None, memory_mask, layers)[:, -1]  # (B, vocab)
        return logits, *(s.k for s, _ in layers), *(s.v for s, _ in layers)


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
        embed = model.encoder.patch_embed  # vitkit's and timm's PatchEmbed both keep the two sizes
        image_size, patch_size = to_2tuple(embed.img_size), to_2tuple(embed.patch_size)
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
        encoder = GraphSpec(SourceEncoderGraph(model), {"src": src}, encoder_outputs(len(model.decoder.blocks)),
                            {"src": axes(a0=batch, a1=Dim("text", min=1, max=model.max_len))})
    else:
        encoder = GraphSpec(ImageEncoderGraph(model), {"pixels": example_pixels(image_size, patch_size, 2)},
                            encoder_outputs(len(model.decoder.blocks)), {"pixels": pixel_axes})
    dec = decoder_meta(model)
    L = dec["layers"]
    with torch.no_grad():
        encoded = dict(zip(encoder.outputs, encoder.module(*encoder.inputs.values())))
    B, H, _, hd = encoded["cross_k.0"].shape
    memory = Dim("memory", min=1, max=65536)
    step = {"token": torch.full((B, 1), dec["bos_id"]), "pos": torch.tensor(1), "memory_mask": encoded["memory_mask"],
            **{n: torch.zeros(B, H, dec["max_len"], hd) for n in layer_names("self_k", L) + layer_names("self_v", L)},
            **{n: encoded[n] for n in layer_names("cross_k", L) + layer_names("cross_v", L)}}
    shapes = {"token": axes(a0=batch), "pos": {}, "memory_mask": axes(a0=batch, a3=memory),
              "caches": tuple([axes(a0=batch)] * 2 * L + [axes(a0=batch, a2=memory)] * 2 * L)}
    graphs = {"encoder": encoder,
              "decoder": GraphSpec(DecoderStepGraph(model.decoder), step, decoder_outputs(L), shapes)}
    kind = "seq2seq" if name == "Seq2Seq" else "captioning"
    return TextExportSpec(kind, model, graphs, image_size, patch_size, {"decoder": dec})


# --------------------------------------------------------------------------------------------- decoding
StepFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def greedy_decode(encoded: dict[str, np.ndarray], step: StepFn, dec: dict, max_new_tokens: int | None = None,
                  min_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding over an exported decoder step, as `generate(beam_size=1)`: BOS first; padding and BOS are
    never generated; a finished row continues with padding; stops when every row has produced EOS (but not before
    `min_steps`: the parity check runs the cache through that many steps even when a model stops at once) or after
    `max_new_tokens` (default max_len - 1). Returns ids (B, L) without BOS and each step's logits (B, L, vocab)."""
    max_new = max_new_tokens or dec["max_len"] - 1
    if not 1 <= max_new < dec["max_len"]:
        raise ValueError(f"max_new_tokens={max_new}; expected 1..{dec['max_len'] - 1} (the decoder's max_len "
                         f"{dec['max_len']} includes the start token)")
    L = dec["layers"]
    B = encoded["memory_mask"].shape[0]
    cache = np.zeros((B, dec["heads"], dec["max_len"], dec["head_dim"]), np.float32)
    feeds = {"token": np.full((B, 1), dec["bos_id"], np.int64), **encoded,
             **{n: cache for n in layer_names("self_k", L) + layer_names("self_v", L)}}  # read, never written to
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
        feeds["token"] = nxt[:, None]
        for n in layer_names("self_k", L) + layer_names("self_v", L):
            feeds[n] = out[f"new_{n}"]
        if done.all() and t + 1 >= min_steps:
            break
    return np.stack(ids, 1), np.stack(logits, 1)


# --------------------------------------------------------------------------------------------- parity
PARITY_STEPS = 16  # decoder steps the parity check runs at least, compared logit by logit with the uncached model
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
        label = "x".join(map(str, inputs[0].shape)) + (f" q{inputs[1].shape[1]}" if len(inputs) > 1 else "")
        cases.append((label, inputs, g == 0))
    return cases if dynamic or spec.task != "captioning" else cases[:1]  # text lengths are always free


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
        max_new = model.max_len - 1
        ids, logits = exported.generate(inputs[0].numpy(), min_steps=min(PARITY_STEPS, max_new))
        want = model.generate(inputs[0], beam_size=1).numpy()
        n = want.shape[1]  # the loop went on past the model's stop only with padding in every row
        same = ids.shape[1] >= n and bool((ids[:, :n] == want).all()) and bool((ids[:, n:] == model.special.pad).all())
        if spec.task == "seq2seq":
            memory, mask = model.encode(inputs[0])
        else:
            memory, mask = model.encode(inputs[0]), None
        prefix = torch.cat([torch.full((len(ids), 1), model.special.bos), torch.from_numpy(ids[:, :-1])], 1)
        rows.append({"input": label, "output": "logits", "max_abs_diff": _diff(logits, model.decoder(prefix, memory,
                                                                                                     mask))})
        rows.append({"input": label, "output": "tokens", "identical": same, "length": n, "steps": int(ids.shape[1])})
        if not same:
            mismatched.append(f"greedy tokens at {label} differ from generate(beam_size=1)")
    return rows, mismatched


def _diff(got: np.ndarray, want: torch.Tensor) -> float:
    want = want.numpy()
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0
