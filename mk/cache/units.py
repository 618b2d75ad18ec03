"""Sizes for people: one formatter for every message that shows a number of bytes."""


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'; bytes below 1 KiB are shown whole."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
