"""Base model + personalization → a pipeline ready for guidance (being split by concern)."""

from steerguide.loading.adapters import *  # noqa: F403
from steerguide.loading.adapters import _load_personalization  # noqa: F401
