"""Client strings made safe to keep: in a request-log row, a metrics label, a routing cache key. Here, in
the lowest package that keys anything with them (routing's affinity)."""


def storable(text: object) -> str:
    """A client's string made safe to store and to use in a cache key: lone surrogates (JSON allows
    ``"\\udc80"``, UTF-8 does not) become U+FFFD and NUL characters (PostgreSQL refuses them) are dropped.
    Anything but a string becomes empty."""
    if not isinstance(text, str):
        return ""
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text.replace("\x00", "") if "\x00" in text else text
