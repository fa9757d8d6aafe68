"""`vitkit serve`: answer predictions over HTTP for a trained task or an exported model.

    vitkit serve --ckpt runs/digits_speedrun/version_0/checkpoints/last.ckpt --port 8000
    curl -F file=@digit.png http://127.0.0.1:8000/predict
"""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from .app import create_app
from .predictor import load_predictor


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitkit serve", description="Serve a model's predictions over HTTP: "
                                "POST /predict (an image; with a field 'question' for VQA; text for Seq2Seq) and "
                                "GET /health.")
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint written by `train.py fit` (any task), or a "
                   "model written by `vitkit export` (its .json, .onnx or .pt2)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="most requests run as one batch")
    p.add_argument("--batch-timeout-ms", type=float, default=10.0,
                   help="how long the first waiting request waits for others to join its batch")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads are refused (413)")
    p.add_argument("--device", default="cpu", help="torch device of a checkpoint's model, e.g. cpu or cuda")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def check_args(args: argparse.Namespace) -> None:
    """ConfigError for values argparse's types do not rule out."""
    checks = (("--port", args.port, 0 <= args.port <= 65535, "a port number 0..65535"),
              ("--max-batch", args.max_batch, args.max_batch >= 1, "a positive integer"),
              ("--batch-timeout-ms", args.batch_timeout_ms, args.batch_timeout_ms >= 0, "0 or more milliseconds"),
              ("--max-upload-mb", args.max_upload_mb, args.max_upload_mb > 0, "a positive number of MiB"))
    for flag, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{flag}: found {value}; expected {expected}")


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    check_args(args)
    predictor = load_predictor(args.ckpt, args.device)
    app = create_app(predictor, max_batch=args.max_batch, batch_timeout_ms=args.batch_timeout_ms,
                     max_upload_mb=args.max_upload_mb)
    print(f"serving {predictor.task} ({predictor.model}, {predictor.format}) on http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
