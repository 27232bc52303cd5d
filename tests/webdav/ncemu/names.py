"""Nextcloud's file name rules, as lib/private/Files/FilenameValidator.php
(Nextcloud 30) applies them with the default configuration, reached through
View::verifyPath.

Two strengths, as in View::verifyPath($path, $name, $readonly):
  * lookup (readonly): only a reserved name (.htaccess) is refused. Every
    request that resolves a path does this for each segment.
  * create (full): empty or blank, '.', '..', longer than 250 bytes, reserved
    names, the forbidden extensions (.part, .filepart), the characters
    '\\' and '/', and control characters 0-31. A name that only ends or
    starts with a space or ends with a dot is allowed: Nextcloud refuses
    those only when an admin adds them to forbidden_filename_extensions
    (the Windows-compatibility switch), which is not the default.
Both raise InvalidPath, which Nextcloud answers with 400.
"""

from .errors import InvalidPath

FORBIDDEN_NAMES = (".htaccess",)
FORBIDDEN_EXTENSIONS = (".filepart", ".part")
FORBIDDEN_CHARS = ("\\", "/")


def check_lookup(name: str) -> None:
    if name in (".", ".."):
        raise InvalidPath("Path contains invalid segments")
    if name.lower() in FORBIDDEN_NAMES:
        raise InvalidPath("Filename is a reserved word")


def check_create(name: str) -> None:
    trimmed = name.strip()
    if trimmed == "":
        raise InvalidPath("Empty filename is not allowed")
    if trimmed in (".", ".."):
        raise InvalidPath("Dot files are not allowed")
    if len(name.encode("utf-8")) > 250:
        raise InvalidPath("Filename is too long")
    if name.lower() in FORBIDDEN_NAMES:
        raise InvalidPath(f'"{name}" is a forbidden file or folder name.')
    lowered = name.lower()
    for ext in FORBIDDEN_EXTENSIONS:
        if lowered.endswith(ext):
            raise InvalidPath(f'"{ext}" is a forbidden file type.')
    if any(ord(c) < 32 for c in name):
        raise InvalidPath("Filename contains at least one invalid character")
    for char in FORBIDDEN_CHARS:
        if char in name:
            raise InvalidPath(f'"{char}" is not allowed inside a file or folder name.')


def natural_key(name: str):
    """PHP strnatcmp order, which AssemblyStream uses to order chunks."""
    key = []
    digits = ""
    text = ""
    for c in name:
        if c.isdigit():
            if text:
                key.append((1, text, 0))
                text = ""
            digits += c
        else:
            if digits:
                key.append((0, "", int(digits)))
                digits = ""
            text += c
    if digits:
        key.append((0, "", int(digits)))
    if text:
        key.append((1, text, 0))
    return key
