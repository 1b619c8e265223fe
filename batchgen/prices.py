"""Prices per image, for all models or per model (`--price 0.06` or `--price imagen4-ultra=0.06,flux-2-pro=0.03`),
and the budget of `--max-spend`: no create is sent that could take the run's spend past it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from . import records
from .errors import UsageError

_AMOUNT = re.compile(r"[0-9]{1,12}(\.[0-9]{0,12})?|\.[0-9]{1,12}")  # ASCII digits only: 0.04, 12, .5
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, slots=True)
class Prices:
    """One amount for every model (`default`), and amounts for some models (`by_model`) that win over it."""

    default: Decimal | None = None
    by_model: Mapping[str, Decimal] = field(default_factory=dict)

    def of(self, model: str) -> Decimal | None:
        return self.by_model.get(model, self.default)

    def missing(self, models: Iterable[str]) -> list[str]:
        return sorted({m for m in models if self.of(m) is None})

    def __str__(self) -> str:  # as given, canonical: what the ledger records (`0.06`, or `a=0.06,b=0.13`)
        parts = [] if self.default is None else [str(self.default)]
        return ",".join([*parts, *(f"{m}={p}" for m, p in sorted(self.by_model.items()))])


def parse(text: str | None, source: str) -> Prices | None:
    """`0.06`, `imagen4-ultra=0.06,nano-banana-pro=0.13`, or both (`0.05,flux-2-pro=0.03`); None for none."""
    if text is None or (source != "--price" and not text.strip()):
        return None
    default: Decimal | None = None
    by_model: dict[str, Decimal] = {}
    for part in text.split(","):
        name, sep, amount = part.strip().rpartition("=")
        name, amount = name.strip(), amount.strip()
        if not _AMOUNT.fullmatch(amount) or (sep and not _MODEL.fullmatch(name)):
            raise UsageError(
                f"{source}: expected a price per image such as 0.04, or model=price,… such as "
                f"imagen4-ultra=0.06,nano-banana-pro=0.13 (digits and a point); got {text!r}"
            )
        if (name in by_model) if sep else (default is not None):
            raise UsageError(f"{source}: {'the price of ' + name if sep else 'a price for every model'} given twice")
        if sep:
            by_model[name] = Decimal(amount)
        else:
            default = Decimal(amount)
    return Prices(default, by_model)


def from_settings(flag: str | None, env: Mapping[str, str]) -> Prices | None:
    """--price, else $BATCHGEN_PRICE, else None (no cost shown)."""
    if flag is not None:
        return parse(flag, "--price")
    return parse(env.get("BATCHGEN_PRICE"), "BATCHGEN_PRICE")


def recorded(text: str | None) -> Prices | None:
    """The prices a ledger recorded (the last run's --price), or None when there are none or they do not parse."""
    try:
        return parse(text, "ledger") if text else None
    except UsageError:
        return None


def costs(counts: Mapping[str, int], prices: Prices | None) -> tuple[list[str], Decimal | None]:
    """`model N x price = cost` for each model (N paid creates), and the total (None when a price is missing)."""
    parts: list[str] = []
    total: Decimal | None = Decimal(0)
    for model, count in sorted(counts.items()):
        price = prices.of(model) if prices is not None else None
        if price is None:
            parts.append(f"{model} {count:,}")
            total = None
        else:
            parts.append(f"{model} {count:,} × {price} = {price * count}")
            if total is not None:
                total += price * count
    return parts, total


def paid_by_model(items: Iterable[records.Record]) -> Counter[str]:
    """The paid creates a ledger counts, per model (from each record's request)."""
    counts: Counter[str] = Counter()
    for record in items:
        paid = records.paid(record)
        if paid and record["request"] is not None:
            counts[str(records.model(record))] += paid
    return counts


class Budget:
    """--max-spend: paid (and possibly paid) creates times their model's price never pass `limit`."""

    def __init__(self, limit: Decimal, prices: Prices) -> None:
        self.limit = limit
        self.prices = prices
        self.spent = Decimal(0)  # creates sent (reserved) that were not shown to have created nothing
        self.reached = False

    def take(self, model: str) -> bool:
        price = self.prices.of(model) or Decimal(0)
        if self.spent + price > self.limit:
            self.reached = True
            return False
        self.spent += price
        return True

    def give_back(self, model: str) -> None:
        self.spent -= self.prices.of(model) or Decimal(0)
