"""Moved to `vitkit.models.pretrained` (loading and converting checkpoints sits beside the models it feeds); every
name still resolves from here."""
from .models import pretrained as _pretrained
from .models.pretrained import *  # noqa: F403


def __getattr__(name: str):
    return getattr(_pretrained, name)
