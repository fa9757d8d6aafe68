"""KV-cache decoding speed-up: the same encoder-decoder decodes N tokens with and without the cache (greedy and
beam search); outputs must be identical token for token, and the table reports the speed-up.

    OMP_NUM_THREADS=1 python benchmarks/kv_cache.py    # transformer_small, 64 and 256 tokens, batch 1 and 8
    python benchmarks/kv_cache.py --quick      # 64 tokens only, one repeat

Without the cache every step re-runs the decoder over the whole prefix (O(N^2) token computations for N
tokens); with it, each step runs the new token only and attends to stored keys/values (O(N)).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import vitkit


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time of `repeats` calls and the last output (warm up separately, on a short decode)."""
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def run(model_name: str, lengths: list[int], batches: list[int], beam: int, repeats: int, src_len: int) -> list[dict]:
    torch.manual_seed(0)
    # untied output layer: a fresh tied model only repeats its input token, which would make "identical" trivial
    model = vitkit.create_model(model_name, vocab_size=8000, max_len=max(lengths) + 1, dropout=0.0,
                                tie_embeddings=False)
    model.eval()
    rows = []
    for n in lengths:
        for batch, beam_size in [(b, 1) for b in batches] + ([(1, beam)] if beam > 1 else []):
            src = torch.randint(3, 8000, (batch, src_len))

            def decode(use_cache: bool, tokens: int = n, src: torch.Tensor = src, beam_size: int = beam_size):
                return lambda: model.generate(src, max_new_tokens=tokens, min_new_tokens=tokens, beam_size=beam_size,
                                              use_cache=use_cache)

            decode(True, 4)(), decode(False, 4)()  # warm-up
            t_cache, out_cache = timed(decode(True), repeats)
            t_full, out_full = timed(decode(False), repeats)
            rows.append({"model": model_name, "tokens": n, "batch": batch, "beam": beam_size,
                         "uncached_s": round(t_full, 3), "cached_s": round(t_cache, 3),
                         "speedup": round(t_full / t_cache, 2), "identical": bool(torch.equal(out_cache, out_full))})
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    return (f"| {r['model']} | {r['tokens']} | {r['batch']} | {r['beam']} | "
            f"{r['uncached_s']:.3f} | {r['cached_s']:.3f} "
            f"| {r['speedup']:.1f}x | {'yes' if r['identical'] else 'NO'} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="transformer_small",
                   help="registered text model (vitkit.list_models(family='text'))")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256], help="tokens to generate")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes for greedy decoding")
    p.add_argument("--beam", type=int, default=4, help="beam size of the extra beam-search row (1: none)")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per row (median)")
    p.add_argument("--src-len", type=int, default=32, help="source tokens")
    p.add_argument("--quick", action="store_true", help="64 tokens, batch 1, one repeat")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args()
    if a.quick:
        a.lengths, a.batches, a.repeats = [64], [1], 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | tokens | batch | beam | uncached s | cached s | speed-up | identical tokens |")
    print("|---|---|---|---|---|---|---|---|")
    rows = run(a.model, a.lengths, a.batches, a.beam, a.repeats, a.src_len)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if not all(r["identical"] for r in rows):
        raise SystemExit("cached and uncached decoding gave different tokens")


if __name__ == "__main__":
    main()
