"""Pretext tasks, one file each. `PRETEXTS` names those this version can train."""

from fgssl_tf.errors import FgsslError

PRETEXTS = ("simclr",)
PLANNED = ("jigsaw", "srgan", "pmg")


def check_pretext(name: str) -> None:
    if name in PRETEXTS:
        return
    if name in PLANNED:
        raise FgsslError(f"--pretext={name} is not implemented yet; available: {', '.join(PRETEXTS)}")
    raise FgsslError(f"unknown --pretext={name!r}; choose one of {', '.join(PRETEXTS)}")
