"""The embedded translation task: numbers and dates written in words <-> digits, with varied source formats.

Four kinds of pairs, mixed evenly; every source has exactly one correct target, so exact match is a fair
metric, and solving it needs what translation needs (reordering, agreement of parts, copying digits):

    words -> digits   "three hundred and five thousand, twenty-one"   -> "305,021"
    digits -> words   "305 021" / "305,021" / "305021"                -> "three hundred five thousand twenty-one"
    date -> ISO       "the 4th of March, nineteen ninety-nine"        -> "1999-03-04"
    ISO -> words      "1999-03-04"                                    -> "march fourth, nineteen ninety-nine"

Sources vary (British "and", hyphens, commas, digit grouping, eight date layouts, month case, years in
digits or words); targets are canonical. Splits hold distinct sources. Written as tab-separated files
`{train,val,test}.tsv` (source<TAB>target) by `generate_numbers`, read back by the same TSV reader that
reads users' files.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
MONTHS = "january february march april may june july august september october november december".split()
ORDINAL_ONES = ("_ first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
                "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth").split()
ORDINAL_TENS = {20: "twentieth", 30: "thirtieth"}
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
DEFAULT_ROOT = os.path.join("datasets", "numbers")
KINDS = ("words2digits", "digits2words", "date2iso", "iso2words")


@dataclass(frozen=True)
class NumbersConfig:
    """What `generate_numbers` makes; stored as meta.json so a folder made differently is rebuilt."""

    num_train: int = 100_000
    num_val: int = 1_000
    num_test: int = 2_000
    max_number: int = 999_999
    seed: int = 0
    version: int = 1


@dataclass(frozen=True)
class Style:
    """How a number is written in words: British 'and' after hundreds, hyphenated tens, comma after thousand."""

    british_and: bool = False
    hyphen: bool = True
    comma: bool = False


CANONICAL = Style()


# ------------------------------------------------------------------------------------------ numbers in words
def _tens(n: int, style: Style) -> str:
    """0 < n < 100 in words."""
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] if ones == 0 else TENS[tens] + ("-" if style.hyphen else " ") + ONES[ones]


def _hundreds(n: int, style: Style) -> str:
    """0 < n < 1000 in words."""
    hundreds, rest = divmod(n, 100)
    if hundreds == 0:
        return _tens(rest, style)
    head = f"{ONES[hundreds]} hundred"
    if rest == 0:
        return head
    return f"{head} {'and ' if style.british_and else ''}{_tens(rest, style)}"


def number_to_words(n: int, style: Style = CANONICAL) -> str:
    """0 <= n < 1,000,000 in English words, e.g. 305021 -> 'three hundred five thousand twenty-one'."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_to_words: {n} is outside 0..999999")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    if thousands == 0:
        return _hundreds(rest, style)
    head = f"{_hundreds(thousands, style)} thousand"
    if rest == 0:
        return head
    if rest < 100 and style.british_and:
        return f"{head} and {_tens(rest, style)}"
    return f"{head}{',' if style.comma else ''} {_hundreds(rest, style)}"


def group_digits(n: int, sep: str) -> str:
    """12345 -> '12,345' (sep ','), '12 345' (sep ' ') or '12345' (sep '')."""
    return f"{n:,}".replace(",", sep)


# ------------------------------------------------------------------------------------------ dates
def ordinal_words(day: int) -> str:
    """1..31 -> 'first' .. 'thirty-first'."""
    if day < 20:
        return ORDINAL_ONES[day]
    tens, ones = divmod(day, 10)
    return ORDINAL_TENS[day] if ones == 0 else f"{TENS[tens]}-{ORDINAL_ONES[ones]}"


def ordinal_digits(day: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def year_to_words(year: int, variant: int = 0) -> str:
    """1900..2099 as spoken. Variant 0 (canonical): 'nineteen oh five', 'two thousand four', 'twenty fifteen';
    from 2001 on, variant 1 says 'two thousand fifteen' and variant 2 'two thousand and fifteen'."""
    century, rest = divmod(year, 100)
    if year == 2000:
        return "two thousand"
    if year > 2000 and (variant > 0 or rest < 10):
        return f"two thousand {'and ' if variant == 2 else ''}{_tens(rest, CANONICAL)}"
    head = _tens(century, CANONICAL)
    if rest == 0:
        return f"{head} hundred"
    return f"{head} oh {ONES[rest]}" if rest < 10 else f"{head} {_tens(rest, CANONICAL)}"


def _month(m: int, rng: np.random.Generator, short: bool = False) -> str:
    name = MONTHS[m - 1][:3] if short else MONTHS[m - 1]
    return name.capitalize() if rng.random() < 0.5 else name


def date_source(year: int, month: int, day: int, rng: np.random.Generator) -> str:
    """One of eight written layouts of a date, with the year in digits or words."""
    y = str(year) if rng.random() < 0.5 else year_to_words(year, int(rng.integers(3)))
    layouts = (
        lambda: f"{_month(month, rng)} {day}, {y}",
        lambda: f"{day} {_month(month, rng)} {y}",
        lambda: f"the {ordinal_words(day)} of {_month(month, rng)}, {y}",
        lambda: f"{_month(month, rng)} the {ordinal_words(day)}, {y}",
        lambda: f"{ordinal_digits(day)} {_month(month, rng)} {y}",
        lambda: f"{_month(month, rng, short=True)} {ordinal_digits(day)}, {y}",
        lambda: f"the {ordinal_digits(day)} of {_month(month, rng)} {y}",
        lambda: f"{_month(month, rng)} {ordinal_words(day)} {y}",
    )
    return layouts[int(rng.integers(len(layouts)))]()


def iso_date(year: int, month: int, day: int) -> str:
    return f"{year:04d}-{month:02d}-{day:02d}"


def date_words(year: int, month: int, day: int) -> str:
    """The canonical spoken form: 'march fourth, nineteen ninety-nine'."""
    return f"{MONTHS[month - 1]} {ordinal_words(day)}, {year_to_words(year)}"


# ------------------------------------------------------------------------------------------ pairs
def _number(rng: np.random.Generator, max_number: int) -> int:
    """Uniform over the number of digits first, so small numbers are as common as large ones."""
    digits = int(rng.integers(1, len(str(max_number)) + 1))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, min(10**digits - 1, max_number) + 1))


def _date(rng: np.random.Generator) -> tuple[int, int, int]:
    year, month = int(rng.integers(1900, 2100)), int(rng.integers(1, 13))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = 28 if month == 2 and not leap else DAYS_IN_MONTH[month - 1]
    return year, month, int(rng.integers(1, days + 1))


def make_pair(rng: np.random.Generator, kind: str, max_number: int = 999_999) -> tuple[str, str]:
    """One (source, target) pair of the given kind (see KINDS)."""
    if kind == "words2digits":
        n = _number(rng, max_number)
        style = Style(bool(rng.random() < 0.5), bool(rng.random() < 0.7), bool(rng.random() < 0.3))
        return number_to_words(n, style), group_digits(n, ",")
    if kind == "digits2words":
        n = _number(rng, max_number)
        return group_digits(n, ("", ",", " ")[int(rng.integers(3))]), number_to_words(n)
    date = _date(rng)
    if kind == "date2iso":
        return date_source(*date, rng), iso_date(*date)
    if kind == "iso2words":
        return iso_date(*date), date_words(*date)
    raise ValueError(f"unknown pair kind {kind!r}; expected one of {KINDS}")


def generate_numbers(root: str | os.PathLike = DEFAULT_ROOT, cfg: NumbersConfig = NumbersConfig()) -> Path:
    """Write train/val/test TSV files under `root` unless a complete set made with `cfg` is there already.
    A source appears in one split only (and once within it)."""
    root = Path(root)
    meta = root / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()) == asdict(cfg):
        return root
    root.mkdir(parents=True, exist_ok=True)
    if meta.exists():
        meta.unlink()  # written last, so an interrupted run is redone
    rng = np.random.default_rng(cfg.seed)
    seen: set[str] = set()
    for split, count in (("test", cfg.num_test), ("val", cfg.num_val), ("train", cfg.num_train)):
        rows = []
        while len(rows) < count:
            source, target = make_pair(rng, KINDS[len(rows) % len(KINDS)], cfg.max_number)
            if source not in seen:
                seen.add(source)
                rows.append(f"{source}\t{target}\n")
        (root / f"{split}.tsv").write_text("".join(rows))
    meta.write_text(json.dumps(asdict(cfg), indent=2))
    return root
