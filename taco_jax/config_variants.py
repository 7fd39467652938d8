"""``get_config("model=vit_mini,sparsity=0.75,runlocal")`` variant strings for config files."""

from __future__ import annotations


def parse_variant(arg: str | None, allowed: dict[str, type]) -> dict[str, object]:
    """Parse ``k=v,k2=v2,flag`` into typed values; bare words are boolean switches (True).

    ``allowed`` maps each key to its type (bool for switches). Unknown keys and values that do
    not parse fail with a message naming them and the allowed keys.
    """
    out: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        if key not in allowed:
            raise ValueError(f"unknown config variant key {key!r} in {arg!r}; allowed: "
                             f"{', '.join(sorted(allowed))}")
        kind = allowed[key]
        if kind is bool:
            if sep and value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"variant {key!r} is a switch; got value {value!r}")
            out[key] = (not sep) or value.lower() in ("true", "1")
            continue
        if not sep:
            raise ValueError(f"variant key {key!r} needs a value ({key}=...)")
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"variant {key}={value!r} is not a valid {kind.__name__}") from None
    return out
