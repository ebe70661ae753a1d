"""A folder on truly read-only storage, for the tests of what readers and writers do there.

As root, ``chmod`` stops no write, so the folder is bind-mounted read-only (writes fail
with EROFS); as another user, taking the write bits away is enough. Where neither works
the test is skipped with the reason.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount_read_only(source: Path, target: Path) -> None:
    target.mkdir()
    for command in (
        ["mount", "--bind", str(source), str(target)],
        ["mount", "-o", "remount,bind,ro", str(target)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True, check=False)
            pytest.skip(f"cannot bind-mount a read-only folder ({done.stderr.strip()})")


@contextmanager
def read_only_folder(source: Path) -> Iterator[Path]:
    """``source`` seen through read-only storage: yields the folder to use."""
    if os.geteuid() == 0:
        target = source.with_name(source.name + "-read-only")
        _mount_read_only(source, target)
        try:
            yield target
        finally:
            subprocess.run(["umount", str(target)], capture_output=True, check=True)
        return
    modes = {p: p.stat().st_mode for p in [source, *source.iterdir()]}
    write_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for path, mode in modes.items():
        path.chmod(mode & ~write_bits)
    try:
        if os.access(source, os.W_OK):
            pytest.skip("taking the write bits away does not stop writes here")
        yield source
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
