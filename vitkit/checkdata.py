"""`vitkit check-data --config <yaml>`: scan every split of a config's dataset before training on it and report
unreadable, truncated, empty or missing files, unexpected image modes, masks of the wrong size, mode or labels,
degenerate or out-of-image boxes and duplicate ids, as a summary table; the exit status is 1 when something
is wrong (2 when the data cannot be opened at all).

Protocol: a data module may define `check(splits[, limit, workers]) -> Report | Iterable[Finding]` and is then
asked directly; vitkit's classification, segmentation and detection modules do, calling the checkers here, which
read their files with the same readers training uses. Any other module that offers `get_dataset(split)` has each
item loaded once, every vitkit error becoming a finding.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image

from .errors import ConfigError, CorruptImageError, DatasetNotFoundError, VitkitError

Severity = Literal["error", "warning"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Finding:
    """One problem: in which split, how bad, what kind (a short tag: unreadable, mask-size, box-dropped ...),
    where (a file or an id) and what was found against what was expected."""

    split: str
    severity: Severity
    kind: str
    where: str
    detail: str


@dataclass
class Report:
    """Items checked per split and everything found."""

    items: dict[str, int]
    findings: list[Finding]
    notes: dict[str, str] = field(default_factory=dict)  # split -> remark shown in the table
    summary: list[str] = field(default_factory=list)  # what the data looks like, printed above the table

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)


# ---------------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class ImageInfo:
    path: str
    mode: str | None = None
    size: tuple[int, int] | None = None  # (width, height)
    kind: str | None = None  # problem tag, None when the file decodes completely
    detail: str = ""


def inspect_image(path: str) -> ImageInfo:
    """Open and fully decode one image file with PIL, as training would."""
    if not os.path.isfile(path):
        return ImageInfo(path, kind="missing", detail="file not found")
    if os.path.getsize(path) == 0:
        return ImageInfo(path, kind="empty", detail="0 bytes")
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
            image.load()
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError ... per format
        truncated = "truncated" in str(err).lower() or isinstance(err, EOFError)
        return ImageInfo(path, kind="truncated" if truncated else "unreadable", detail=f"{type(err).__name__}: {err}")
    return ImageInfo(path, mode=mode, size=size)


def inspect_images(paths: Sequence[str], workers: int | None = None) -> list[ImageInfo]:
    """`inspect_image` over many files on a thread pool (PIL releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(inspect_image, paths))


def image_findings(split: str, infos: Sequence[ImageInfo], what: str = "image") -> list[Finding]:
    """Errors for files that do not decode; warnings for modes other than the split's usual one (they are
    converted to RGB on loading, which may not be what was meant: CMYK, 16-bit, alpha)."""
    found = [Finding(split, "error", i.kind, i.path, f"{what}: {i.detail}") for i in infos if i.kind]
    modes = Counter(i.mode for i in infos if i.mode)
    if modes:
        usual, _ = modes.most_common(1)[0]
        found += [
            Finding(split, "warning", "mode", i.path,
                    f"{what} mode {i.mode} (most of this split is {usual}); converted to RGB on loading")
            for i in infos if i.mode and i.mode != usual
        ]
    return found


def duplicate_findings(split: str, ids: Sequence[Any], what: str) -> list[Finding]:
    counts = Counter(ids)
    return [Finding(split, "error", "duplicate", str(i), f"{what} listed {n} times; expected once")
            for i, n in counts.items() if n > 1]


def leak_findings(ids_by_split: dict[str, set]) -> list[Finding]:
    """The same file in two splits (a test image trained on)."""
    found, names = [], list(ids_by_split)
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            for item in sorted(ids_by_split[a] & ids_by_split[b])[:100]:
                found.append(Finding(f"{a}+{b}", "error", "leak", str(item),
                                     f"in both {a} and {b}; expected disjoint splits"))
    return found


def error_kind(err: BaseException) -> str:
    """A finding tag for one of vitkit's reader errors, from its type and wording."""
    text = str(err)
    if isinstance(err, DatasetNotFoundError):
        return "missing"
    if isinstance(err, CorruptImageError):
        return "truncated" if "truncated" in text.lower() else "unreadable"
    for needle, kind in (("mask has mode", "mask-mode"), ("mask is", "mask-size"), ("label value", "mask-label"),
                         ("its annotation says", "size-mismatch"), ("repeats", "duplicate")):
        if needle in text:
            return kind
    return "data"


# ---------------------------------------------------------------------------------------------- checkers
def check_classification(dm, splits: Sequence[str], limit: int | None, workers: int | None) -> Report:
    report, findings, ids, seen = Report({}, []), [], {}, {}
    items = report.items
    for split in splits:
        ds = _split_dataset(dm, split, findings)
        if ds is None or _same_as_before(report, seen, split, list(getattr(ds, "samples", None) or ds.names)):
            continue
        if hasattr(ds, "samples"):  # image files
            samples = list(ds.samples)[:limit]
            paths, labels = [p for p, _ in samples], np.array([label for _, label in samples], dtype=np.int64)
            infos = inspect_images(paths, workers)
            findings += image_findings(split, infos)
            report.summary.append(folder_summary(split, infos, labels, dm.class_names))
            findings += duplicate_findings(split, paths, "file")
            ids[split] = set(paths)
        else:  # in-memory arrays (digits, torchvision sets)
            labels = np.asarray(ds.labels)[:limit]
            findings += duplicate_findings(split, list(ds.names)[:limit], "sample")
            ids[split] = set(ds.names)
        bad = np.flatnonzero((labels < 0) | (labels >= dm.num_classes))
        findings += [Finding(split, "error", "label", str(i), f"label {labels[i]}; expected 0..{dm.num_classes - 1}")
                     for i in bad]
        items[split] = len(labels)
        findings += _empty(split, len(labels))
    report.findings = findings + leak_findings(ids)
    if (
        getattr(dm.hparams, "dataset", None) == "imagefolder"
        and dm.hparams.train_transforms is None
        and items.get("train")
    ):
        choice = dm.folder_pipeline  # what training on this folder would use, from the same statistics
        report.summary.append(f"default pipeline: {choice.name}: {choice.reason}")
    return report


def folder_summary(split: str, infos: Sequence[ImageInfo], labels: np.ndarray, class_names: Sequence[str]) -> str:
    """One line on a folder split: images, classes (fewest/most images), sizes and modes: what the default
    pipeline and the cache are chosen from."""
    sizes = np.array([i.size for i in infos if i.size is not None]).reshape(-1, 2)  # (n, 2) width, height
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names)) if len(labels) else np.zeros(0, int)
    if not len(sizes):
        return f"{split}: {len(infos)} images, none readable"
    (w, h), (w0, h0), (w1, h1) = (np.median(sizes, axis=0).astype(int), sizes.min(axis=0), sizes.max(axis=0))
    modes = ", ".join(f"{m} {n}" for m, n in Counter(i.mode for i in infos if i.mode).most_common())
    fewest, most = int(counts.argmin()), int(counts.argmax())
    return (f"{split}: {len(infos)} images in {int((counts > 0).sum())} classes (fewest {counts[fewest]} in "
            f"{class_names[fewest]!r}, most {counts[most]} in {class_names[most]!r}); size median {w}x{h} "
            f"(min {w0}x{h0}, max {w1}x{h1}); modes {modes}")


def check_segmentation(dm, splits: Sequence[str], limit: int | None, workers: int | None) -> Report:
    report, findings, ids, seen = Report({}, []), [], {}, {}
    items = report.items
    for split in splits:
        ds = _split_dataset(dm, split, findings)
        if ds is None or _same_as_before(report, seen, split, list(ds.samples)):
            continue
        samples = list(ds.samples)[:limit]
        infos = inspect_images([image for image, _ in samples], workers)
        findings += image_findings(split, infos)
        findings += duplicate_findings(split, [image for image, _ in samples], "image")
        for index, info in enumerate(infos):
            if info.kind is None:  # the image reads: check its mask as training does (mode, size, labels)
                findings += _catch(split, samples[index][1], lambda i=index, ds=ds: ds.load(i))
        ids[split] = {image for image, _ in samples}
        items[split] = len(samples)
        findings += _empty(split, len(samples))
    report.findings = findings + leak_findings(ids)
    return report


def check_detection(dm, splits: Sequence[str], limit: int | None, workers: int | None) -> Report:
    report, findings, ids, seen = Report({}, []), [], {}, {}
    items = report.items
    fixes = dm.box_fixes
    for split in splits:
        before = (fixes.clamped, fixes.dropped, len(fixes.examples))
        ds = _split_dataset(dm, split, findings)
        if ds is None or _same_as_before(report, seen, split, [r.path for r in ds.records]):
            continue
        examples = fixes.examples[before[2]:]
        if fixes.dropped > before[1]:
            findings.append(Finding(split, "error", "box-dropped", "; ".join(examples) or "-",
                                    f"{fixes.dropped - before[1]} degenerate or out-of-image box(es), "
                                    "dropped on loading"))
        if fixes.clamped > before[0]:
            findings.append(Finding(split, "warning", "box-clamped", "; ".join(examples) or "-",
                                    f"{fixes.clamped - before[0]} box(es) crossing the image border, "
                                    "clamped on loading"))
        records = list(ds.records)[:limit]
        infos = inspect_images([r.path for r in records], workers)
        findings += image_findings(split, infos)
        findings += [
            Finding(split, "error", "size-mismatch", r.path,
                    f"image is {i.size[0]}x{i.size[1]}, its annotation says {r.width}x{r.height}")
            for r, i in zip(records, infos) if i.size is not None and i.size != (r.width, r.height)
        ]
        findings += duplicate_findings(split, [r.image_id for r in records], "image id")
        findings += duplicate_findings(split, [r.path for r in records], "file")
        ids[split] = {r.path for r in records}
        items[split] = len(records)
        findings += _empty(split, len(records))
    report.findings = findings + leak_findings(ids)
    return report


def check_generic(dm, splits: Sequence[str], limit: int | None, workers: int | None) -> Report:
    """Any other data module: build each split and load every item once, as a DataLoader would."""
    items, findings = {}, []
    for split in splits:
        ds = _split_dataset(dm, split, findings)
        if ds is None:
            continue
        n = len(ds) if limit is None else min(limit, len(ds))
        for i in range(n):
            findings += _catch(split, f"{split}[{i}]", lambda i=i, ds=ds: ds[i])
        items[split] = n
        findings += _empty(split, n)
    return Report(items, findings)


def _same_as_before(report: Report, seen: dict[str, set], split: str, members: list) -> bool:
    """A split that is another one by the module's own rule (no test folder: test is val) is checked once."""
    members = set(map(str, members))
    same = next((other for other, earlier in seen.items() if earlier == members), None)
    if same is None:
        seen[split] = members
        return False
    report.items[split] = report.items.get(same, len(members))
    report.notes[split] = f"same as {same}"
    return True


def _split_dataset(dm, split: str, findings: list[Finding]):
    """The dataset of one split, or None with a finding when building it fails (missing folder, bad annotations)."""
    try:
        if hasattr(dm, "get_dataset"):
            return dm.get_dataset(split)
        dm.setup({"train": "fit", "val": "validate", "test": "test"}.get(split, split))
        return getattr(dm, f"{split}_dataloader")().dataset
    except VitkitError as err:
        findings.append(Finding(split, "error", error_kind(err), split, str(err)))
        return None


def _catch(split: str, where: str, load: Callable[[], Any]) -> list[Finding]:
    try:
        load()
    except VitkitError as err:
        return [Finding(split, "error", error_kind(err), where, str(err))]
    return []


def _empty(split: str, n: int) -> list[Finding]:
    return [Finding(split, "error", "empty-split", split, "no items; expected at least one")] if n == 0 else []


def check_datamodule(dm, splits: Sequence[str] = SPLITS, limit: int | None = None,
                     workers: int | None = None) -> Report:
    """Check a data module: its own `check(splits[, limit, workers])` if it has one (vitkit's modules call the
    checkers above), else every item loaded once (`check_generic`)."""
    dm.prepare_data()
    check = getattr(dm, "check", None)
    if not callable(check):
        return check_generic(dm, splits, limit, workers)
    takes = inspect.signature(check).parameters
    found = check(list(splits), limit=limit, workers=workers) if "limit" in takes else check(list(splits))
    if isinstance(found, Report):
        return found
    return Report({s: -1 for s in splits}, [f if isinstance(f, Finding) else Finding(*f) for f in found])


# ---------------------------------------------------------------------------------------------- config
def datamodule_from_config(config: str, overrides: Sequence[str] = ()):
    """Instantiate the `data:` section of a training config (class_path + init_args), with `--data.*` overrides."""
    from jsonargparse import ArgumentParser
    from pytorch_lightning import LightningDataModule

    if not os.path.isfile(config):
        raise ConfigError(f"--config {config}: file not found; expected a training config such as "
                          "configs/classification/vit_tiny_digits.yaml")
    with open(config) as f:
        section = (yaml.safe_load(f) or {}).get("data")
    if not isinstance(section, dict) or "class_path" not in section:
        raise ConfigError(f"{config}: no data section with a class_path; "
                          f"expected data: {{class_path: vitkit.data.X, init_args: ...}}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    try:
        cfg = parser.parse_args(["--data", yaml.safe_dump(section), *overrides])
        return parser.instantiate_classes(cfg).data
    except VitkitError:
        raise
    except Exception as err:  # noqa: BLE001 - jsonargparse reports type errors as ArgumentError/ValueError
        cause = err
        while cause is not None and not isinstance(cause, VitkitError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise ConfigError(f"{config}: data section does not parse ({err})") from err


# ---------------------------------------------------------------------------------------------- output
def print_report(report: Report, title: str, show: int, out=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout, width=160)
    console.print(title, markup=False, highlight=False)
    for line in report.summary:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    table = Table()
    for column in ("split", "items", "errors", "warnings", "what"):
        table.add_column(column, justify="right" if column in ("items", "errors", "warnings") else "left")
    splits = list(report.items) + sorted({f.split for f in report.findings} - set(report.items))
    for split in splits:
        here = [f for f in report.findings if f.split == split]
        kinds = Counter(f.kind for f in here)
        n = report.items.get(split)
        table.add_row(split, "-" if n is None or n < 0 else str(n), str(sum(f.severity == "error" for f in here)),
                      str(sum(f.severity == "warning" for f in here)),
                      report.notes.get(split) or ", ".join(f"{k} {c}" for k, c in kinds.most_common()) or "ok")
    console.print(table)
    ordered = sorted(report.findings, key=lambda f: f.severity != "error")
    for f in ordered[:show]:
        console.print(f"{f.severity.upper():7} {f.split:6} {f.kind:14} {f.where}: {f.detail}", markup=False,
                      highlight=False, soft_wrap=True)
    if len(ordered) > show:
        console.print(f"... and {len(ordered) - show} more (--show N lists more)", markup=False)
    verdict = "OK" if not report.errors else "FAILED"
    console.print(f"check-data {verdict}: {report.errors} error(s), {report.warnings} warning(s)", markup=False)


def main(argv: Sequence[str] | None = None) -> None:
    """`vitkit check-data --config <yaml> [--splits ...] [--limit N] [--strict] [--data.init_args.root ...]`."""
    parser = argparse.ArgumentParser(prog="vitkit check-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a training config (its data section is checked)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to scan (default: train val test)")
    parser.add_argument("--limit", type=int, default=None, help="scan at most this many items per split")
    parser.add_argument("--show", type=int, default=20, help="list at most this many findings")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: Python's choice)")
    parser.add_argument("--strict", action="store_true", help="warnings fail the check too")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("--") and not o.startswith("--data.")]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (only --data.* overrides are passed to the data module)")
    dm = datamodule_from_config(args.config, overrides)
    report = check_datamodule(dm, args.splits, args.limit, args.workers)
    print_report(report, f"check-data: {args.config} ({type(dm).__name__})", args.show)
    if report.errors or (args.strict and report.warnings):
        raise SystemExit(1)
