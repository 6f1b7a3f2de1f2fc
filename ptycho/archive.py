"""Reading zip archives that arrive from elsewhere (model bundles, NPZ data) as untrusted input.

A bundle or a data file comes by ``dvc pull``, e-mail or a shared drive, so its reader must
not trust it. Here everything is checked before it is read (member count, names, compression
method, encryption flag, declared sizes against a cap), and members are read in chunks while
counting what actually comes out, so neither a zip bomb nor a header that lies about a size
can make the reader allocate more than the cap. JSON text is parsed with limits on size,
nesting depth and number size, and without NaN/Infinity.

Every problem is raised as the caller's error type (``BundleError``, ``DataError``) with a
message that names the file and the member.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
MAX_NAME_LENGTH = 255
MAX_JSON_DEPTH = 32
MAX_JSON_INTEGER_DIGITS = 20  # beyond +-2**63: no field of ours needs more, and float() overflows
_CHUNK = 1 << 20

# What zipfile raises on malformed archives besides BadZipFile, as found by fuzzing: a corrupt
# central directory gives struct.error, ValueError, OverflowError or UnicodeDecodeError (a name
# flagged UTF-8 that is not); a truncated member EOFError; a corrupt deflate stream zlib.error.
# NotImplementedError (unknown method) and RuntimeError (encrypted) are prevented by the
# checks below and listed for completeness.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)

# Bundle member names: relative paths of plain ASCII words, so no "..", no absolute path, no
# backslash, no control or look-alike characters can reach a message or a file system.
_STRICT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*")


def is_plain_name(name: str) -> bool:
    """A bundle member name: a relative path of ASCII words (see ``_STRICT_NAME``), at most 255 characters."""
    return len(name) <= MAX_NAME_LENGTH and _STRICT_NAME.fullmatch(name) is not None


def open_zip(path: Path, where: str, error: type[Exception]) -> zipfile.ZipFile:
    """The zip at ``path`` (central directory parsed, nothing decompressed yet).

    ``where`` starts every message (the file, and what it should have been), ``error`` is the
    caller's exception type; the same two arguments go to the functions below.
    """
    try:
        return zipfile.ZipFile(path)
    except UnicodeDecodeError as exc:
        raise error(f"{where}: zip member names are not valid UTF-8 ({exc})") from exc
    except ZIP_ERRORS as exc:
        raise error(f"{where}: not a zip file, or a truncated or corrupt one ({type(exc).__name__}: {exc})") from exc


def checked_infos(
    archive: zipfile.ZipFile, where: str, error: type[Exception], *, max_members: int, strict_names: bool
) -> list[zipfile.ZipInfo]:
    """The members of ``archive``, each checked for name, duplicates, encryption and method.

    ``strict_names``: names must be relative paths of ASCII words (bundles); otherwise any
    printable name without a path separator problem is accepted (NPZ keys are dict keys only).
    """
    infos = archive.infolist()
    if len(infos) > max_members:
        raise error(f"{where}: zip has {len(infos)} members, more than the {max_members} allowed")
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        shown = ascii(name)[1:-1][:80]
        if not name or len(name) > MAX_NAME_LENGTH:
            raise error(f"{where}: zip member name '{shown}' is empty or longer than {MAX_NAME_LENGTH} characters")
        if strict_names:
            if not is_plain_name(name):
                raise error(
                    f"{where}: zip member name '{shown}' is not a plain relative path (letters, digits, '_', '-', "
                    "'.', '/' between words; no '..', no absolute path, no backslash)"
                )
        elif not name.isprintable() or name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise error(f"{where}: zip member name '{shown}' has control characters or is not a relative path")
        if name in seen:
            raise error(f"{where}: zip has two members named '{shown}'")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise error(f"{where}: zip member '{shown}' is encrypted; encrypted members are not read")
        if info.compress_type not in ALLOWED_COMPRESSION:
            raise error(
                f"{where}: zip member '{shown}' uses compression method {info.compress_type}; "
                f"only {', '.join(ALLOWED_COMPRESSION.values())} are read"
            )
        if info.file_size < 0 or info.compress_size < 0:
            raise error(f"{where}: zip member '{shown}' declares a negative size")
    return infos


def check_declared_size(info: zipfile.ZipInfo, cap: int, where: str, error: type[Exception]) -> None:
    if info.file_size > cap:
        raise error(
            f"{where}: zip member '{info.filename}' declares {info.file_size} bytes, more than the {cap} allowed"
        )


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, where: str, error: type[Exception]) -> bytes:
    """The bytes of one member, at most ``cap``; the CRC-32 and the declared size are checked.

    The declared size is checked first; then the member is read in chunks and counted, so a
    member that yields more (or less) than it declares is refused without holding more than
    ``cap`` bytes.
    """
    check_declared_size(info, cap, where, error)
    chunks, total = [], 0
    try:
        with archive.open(info) as handle:
            while True:
                chunk = handle.read(min(_CHUNK, cap + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise error(f"{where}: zip member '{info.filename}' holds more than the {cap} bytes allowed")
                chunks.append(chunk)
    except ZIP_ERRORS as exc:
        raise error(f"{where}: member '{info.filename}' is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
    if total != info.file_size:
        raise error(f"{where}: zip member '{info.filename}' declares {info.file_size} bytes but holds {total}")
    return b"".join(chunks)


def read_into(handle: IO[bytes], view: memoryview, what: str, error: type[Exception]) -> None:
    """Fill ``view`` (bytes) from ``handle`` chunk by chunk; refuse a short read."""
    offset, size = 0, len(view)
    while offset < size:
        chunk = handle.read(min(_CHUNK, size - offset))
        if not chunk:
            raise error(f"{what}: ends after {offset} of {size} bytes")
        view[offset : offset + len(chunk)] = chunk
        offset += len(chunk)


# ---------------------------------------------------------------------------------------------
# JSON


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} does not fit a double")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INTEGER_DIGITS:
        raise ValueError(f"integer with {len(text)} digits is larger than {MAX_JSON_INTEGER_DIGITS} digits allow")
    return int(text)


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (a deep value must not blow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_json(data: bytes | str, where: str, error: type[Exception], *, max_bytes: int) -> Any:
    """Parse JSON text from an untrusted file: at most ``max_bytes``, nested at most
    ``MAX_JSON_DEPTH`` deep, finite numbers only, integers of at most 20 digits."""
    if len(data) > max_bytes:
        raise error(f"{where}: JSON text of {len(data)} bytes is longer than the {max_bytes} allowed")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except RecursionError as exc:
        raise error(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{where}: not valid JSON ({exc})") from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value
