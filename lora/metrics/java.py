"""Java, which the official NLG scorers need (METEOR 1.5, the PTB tokenizer of the COCO caption scorers)."""

from __future__ import annotations

import shutil

from lora.errors import InputNotFound


class JavaNotFoundError(InputNotFound):
    """No `java` on PATH (a user error: one line, exit status 2, from every entry point)."""


def require_java() -> str:
    """The path of `java`, or a one-line JavaNotFoundError saying how to install it. Called when an NLG run is
    configured, so that a missing JRE fails before training rather than after it."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "the NLG metrics need `java` (METEOR 1.5, PTB tokenizer) and none is on PATH: "
            "install a JRE, e.g. `apt-get install default-jre-headless`"
        )
    return java
