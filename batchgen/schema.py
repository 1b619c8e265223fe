"""The fields a manifest item may have, from the model cards (models.py): one source of field truth.

The field types live in fields.py and each model's table in its card (batchgen/cards/*.json). This module keeps
the names the rest of batchgen reads: the default model's table (INPUT_FIELDS, which the `imagen4-ultra` card
reproduces exactly as the table that used to be written here), and every field any built-in card has
(MANIFEST_FIELDS), for the readers' unknown-field checks. Pure data: no I/O beyond the built-in cards.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import models
from .fields import MAX_SEED as MAX_SEED
from .fields import MAX_TEXT as MAX_TEXT
from .fields import FieldError as FieldError
from .fields import InputField as InputField
from .fields import Kind as Kind
from .fields import describe as describe
from .fields import shorten as shorten
from .fields import suggest as _suggest
from .models import EXPANSION_FIELDS as EXPANSION_FIELDS
from .models import TOP_FIELDS as TOP_FIELDS

MODEL = models.DEFAULT_MODEL  # the model of an item that names none
_CARD = models.builtin().cards[MODEL]

INPUT_FIELDS: dict[str, InputField] = dict(_CARD.fields)
ASPECT_RATIOS = INPUT_FIELDS["aspect_ratio"].choices
ALL_FIELDS = (*TOP_FIELDS, *models.builtin().field_names)
# Fields a manifest item may have besides the request's: they make several items of one (expand.py).
MANIFEST_FIELDS = (*ALL_FIELDS, *EXPANSION_FIELDS)

# Output size in pixels per aspect ratio: Imagen 4 Ultra's 2K outputs (the largest is 2816x1536).
IMAGE_SIZES: dict[str, tuple[int, int]] = dict(_CARD.sizes)

# File extension per image type, as written to the output directory.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def suggest(name: str, known: Sequence[str] = ALL_FIELDS) -> str | None:
    """The known field name nearest to `name`, if any is close (`aspect-ratio` -> `aspect_ratio`)."""
    return _suggest(name, known)
