"""Every file pyrovae reads or writes, read and written safely here, in one place (issue 24).

Reading. A path that is not a regular file is refused before anything reads it: opening a FIFO
waits for a writer forever, and ``/dev/zero`` reads until memory runs out. So is a file larger
than what it names can sanely hold. The check is made on the path (``os.stat``, so nothing with
side effects is opened) and again on the open descriptor (opened non-blocking, so a FIFO swapped
in between cannot hang the read), and no more than the bound is ever read.

Writing. Every file is replaced atomically: written to ``NAME.tmp`` beside it, then renamed into
place, so a kill or a full disk leaves the old version or the new one, never half of one. No
write ever follows a symbolic link (one planted by an unpacked tarball, a shared scratch
folder, a copied run): the temporary file is created exclusively with ``O_NOFOLLOW`` (a link
found at its name is removed, which never touches the link's target), and the rename replaces
a link at the final path instead of writing into what it points to. Lock files are opened with
``O_NOFOLLOW`` too, and a run's own folders (``checkpoints/``, ``figures/``) must not be links
(``own_folder``), or a run would write into another one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Type

# os.O_NOFOLLOW and os.O_NONBLOCK are POSIX; elsewhere (Windows) there are no FIFOs to block
# on and links need privileges to make, so the flags are simply absent.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# What a stat mode stands for, as an error message names it; a regular file is none of these.
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),  # a named pipe: opening it waits for a writer
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a non-regular ``os.stat`` mode is, e.g. ``"a FIFO"``."""
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a file")


def os_reason(exc: OSError) -> str:
    """The operating system's reason, e.g. ``Permission denied``, without the repeated path."""
    return exc.strerror or " ".join(str(exc).split())


def link_target(path: Path) -> str:
    """Where the symbolic link ``path`` points, as written in the link (for messages)."""
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def size_text(n_bytes: int) -> str:
    """A byte count for messages: ``1.5 GiB``, ``78.4 MiB``, ``12 bytes``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} byte" + ("" if n_bytes == 1 else "s")


def check_regular(
    path: Path, what: str, max_bytes: int, fix: str, error: Type[Exception] = ValueError
) -> Optional[os.stat_result]:
    """Check a file before anything opens it: ``os.stat`` after resolving symbolic links.

    Args:
        path: The file.
        what: What it should be, for messages, e.g. ``"an .amat file"``.
        max_bytes: The largest size such a file can sanely have.
        fix: How to fix a bad file, the end of every message.
        error: The exception type to raise (the caller's: ``DataError``, ``CheckpointError``).

    Returns:
        The file's ``os.stat`` result, or None when nothing is at ``path`` (not even a link).

    Raises:
        error: If ``path`` is a dangling symbolic link or a loop of them, is not a regular
            file (a directory, FIFO, socket or device), is larger than ``max_bytes``, or cannot
            be examined (the OS's reason); the message names ``path``.
    """
    path = Path(path)
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a directory on the way is a loop of symbolic links
            raise error(f"{path} goes through a loop of symbolic links; {fix}") from None
        raise error(f"cannot read {path}: {os_reason(exc)}; {fix}") from None
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # the entry is there, its target is not
        raise error(
            f"{path} is a symbolic link to {link_target(path)}, which does not exist; fix or "
            f"remove the link ({fix})"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(
                f"{path} is a symbolic link that loops (to {link_target(path)}); fix or remove "
                f"the link ({fix})"
            ) from None
        raise error(f"cannot read {path}: {os_reason(exc)}; {fix}") from None
    _check_stat(path, info, what, max_bytes, fix, error)
    return info


def _check_stat(path: Path, info, what: str, max_bytes: int, fix: str, error) -> None:
    via = f", through the symbolic link to {link_target(path)}" if path.is_symlink() else ""
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path} is a directory{via}, not {what}; {fix}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is not a regular file ({file_kind(info.st_mode)}{via}); {fix}")
    if info.st_size > max_bytes:
        raise error(
            f"{path} holds {info.st_size} bytes, more than the {size_text(max_bytes)} that "
            f"{what} can sanely hold; {fix}"
        )


def open_regular(
    path: Path, what: str, max_bytes: int, fix: str, error: Type[Exception] = ValueError
) -> BinaryIO:
    """``path`` opened for reading in binary, once ``check_regular`` has passed and the same
    holds for the open descriptor (the path may have changed in between).

    Raises:
        FileNotFoundError: nothing is at ``path``.
        error: as ``check_regular``, or the OS refused to open it (its reason).
    """
    path = Path(path)
    if check_regular(path, what, max_bytes, fix, error) is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError as exc:
        raise error(f"cannot read {path}: {os_reason(exc)}; {fix}") from None
    try:
        _check_stat(path, os.fstat(fd), what, max_bytes, fix, error)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bytes(
    path: Path, what: str, max_bytes: int, fix: str, error: Type[Exception] = ValueError
) -> bytes:
    """The contents of ``path``, checked as ``open_regular`` says, never more than
    ``max_bytes`` (a file that grows past it while read is refused)."""
    with open_regular(path, what, max_bytes, fix, error) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"cannot read {path}: {os_reason(exc)}; {fix}") from None
    if len(data) > max_bytes:
        raise error(f"{path} grew past {size_text(max_bytes)} while read; {fix}")
    return data


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` by what ``write(file)`` writes, atomically and never through a link.

    ``NAME.tmp`` is created exclusively, not following links (a stale one, or a link planted
    there, is removed first: removing a link leaves its target alone), filled, and renamed over
    ``path`` (a link at ``path`` is replaced, its target untouched). On any failure it is
    removed, so a full disk leaves the previous version, not half a new one.

    Raises:
        OSError: the system's refusal; for a full disk, the ``OSError`` (``ENOSPC``) that a
            writer such as ``torch.save`` reports only as a ``RuntimeError`` caused by it.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _remove_stale(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                write(f)
            except RuntimeError as exc:  # torch.save: "unexpected pos", the OSError inside
                cause = _os_error_in(exc)
                if cause is None:
                    raise
                raise cause from None
        os.replace(tmp, path)
    except BaseException:
        _remove_stale(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """``write_atomic`` of ``text`` (UTF-8)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def _remove_stale(tmp: Path) -> None:
    """Remove a leftover temporary file or a link at its name, never what a link points to; a
    directory there is the user's, and an ``IsADirectoryError``."""
    try:
        info = os.lstat(tmp)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory is where pyrovae writes", str(tmp))
    os.unlink(tmp)


def _os_error_in(exc: BaseException) -> Optional[OSError]:
    """The first ``OSError`` among ``exc``'s causes and contexts, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def open_lock(path: Path, error: Type[Exception] = ValueError) -> int:
    """A descriptor of the lock file ``path`` for reading and writing, created if missing,
    never through a symbolic link and never a FIFO or device.

    Raises:
        error: ``path`` is a link or not a regular file (one line, how to fix it).
    """
    path = Path(path)
    fix = "a run's lock is a plain file pyrovae makes: remove what is there"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise error(f"{path} is a symbolic link (to {link_target(path)}); {fix}") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without a reader; a directory
            raise error(f"{path} is not a regular file; {fix}") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(f"{path} is not a regular file ({file_kind(info.st_mode)}); {fix}")
    return fd


def own_folder(path: Path, error: Type[Exception] = ValueError) -> Path:
    """The run folder ``path`` (``checkpoints/``, ``figures/``), made if missing; refused if it
    is a symbolic link (writing there would write into another folder, perhaps another run's)
    or not a directory."""
    path = Path(path)
    if path.is_symlink():
        raise error(
            f"{path} is a symbolic link (to {link_target(path)}); a run writes its own files "
            "there, so it must be a folder of its own: replace the link by a copy of what it "
            "points to, or remove it"
        )
    if path.exists() and not path.is_dir():
        raise error(f"{path} is not a folder; a run writes its files there: move it away")
    path.mkdir(parents=True, exist_ok=True)
    return path
