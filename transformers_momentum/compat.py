"""Differences between the transformers releases the plugin supports (see pyproject's range).

transformers 5.24 renamed the cache argument of every forward, and the cache field of every model output, from
`past_key_values` to `cache` (the old name is deprecated, removal planned for 5.40); 5.23 knows only the old name.
The plugin's own calls use the installed release's name, so they neither break on 5.23 nor warn on 5.24.
(`modeling_momentum_gpt.py` keeps its own copy of `CACHE_NAME`: it must stay self-contained for remote code.)
"""

from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_kwargs(cache) -> dict:
    """`{CACHE_NAME: cache}`, to splat into a model call."""
    return {CACHE_NAME: cache}


def output_cache(output):
    """The cache a model output carries, under the installed release's field name."""
    return getattr(output, CACHE_NAME)


__all__ = ["CACHE_NAME", "cache_kwargs", "output_cache"]
