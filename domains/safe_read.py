"""Reading what a sandbox wrote, without following anything it planted (DESIGN §8, first rule).

A job, eval or tool folder is writable from inside a sandbox, while the code reading it back runs
outside as a more privileged user. Opening `job_dir / "stdout.txt"` by path would follow a symlink
to the sealed labels, the secret key or /proc/self/environ; reading a FIFO would block forever;
a hard link would smuggle in a file the sandbox could not name. So every read goes through here:

1. Folders are opened one component at a time with O_DIRECTORY | O_NOFOLLOW, starting from a
   directory the trusted side trusts (its own DOJO_HOME paths).
2. Files are opened relative to that folder's descriptor with O_NOFOLLOW | O_NONBLOCK (a FIFO
   cannot block the open), then checked on the descriptor (fstat): a regular file, one link,
   owned by the expected user, no larger than the cap. What is read is what was checked.
3. Anything else is refused with a `Refused` whose message says why; callers record it as a
   warning on the experiment.

Stdlib only: domains.verification and experiments.services use it; nothing here imports Django.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


class Refused(Exception):
    """A file or folder the trusted side will not read; str() says why, naming it."""


def sandbox_owner() -> int:
    """The uid that owns what a sandbox writes: the dropped user when we are root, else us."""
    from domains.sandbox import sandbox_user

    drop = sandbox_user()
    return drop[0] if drop else os.geteuid()


def tree_problems(root_fd: int, *, owner: int | Iterable[int], depth: int = 16) -> list[str]:
    """What in the folder tree under `root_fd` is not a plain folder or a regular file with one
    link owned by `owner` (checked with lstat through folder descriptors, never following a link).
    For output of a sandbox that has ended: nothing can change the tree between check and use."""
    owners = {owner} if isinstance(owner, int) else set(owner)
    problems: list[str] = []

    def walk(fd: int, rel: str, level: int) -> None:
        for name in sorted(os.listdir(fd)):
            st = os.lstat(name, dir_fd=fd)
            path = rel + name
            if stat.S_ISDIR(st.st_mode) and level < depth:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    walk(sub, path + "/", level + 1)
                finally:
                    os.close(sub)
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{path} is {_kind(st.st_mode)}")
            elif st.st_nlink != 1:
                problems.append(f"{path} is a hard link ({st.st_nlink} names)")
            elif st.st_uid not in owners:
                problems.append(f"{path} is owned by uid {st.st_uid}, not by the sandbox")

    walk(root_fd, "", 0)
    return problems


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_dir(path: Path | str, *, under: Path | str | None = None, dir_fd: int | None = None) -> int:
    """A descriptor on folder `path`, no component of it a symlink. With `under` (a trusted
    folder, opened normally) or `dir_fd`, only the components below it are walked with
    O_NOFOLLOW; `path` is then relative to it (or absolute inside it). Raises Refused."""
    path = Path(path)
    if under is not None:
        base = Path(under)
        rel = path.relative_to(base) if path.is_absolute() else path
        start = os.open(base, _DIR_FLAGS & ~os.O_NOFOLLOW)
    elif dir_fd is not None:
        rel, start = path, os.dup(dir_fd)
    else:
        rel, start = path.relative_to("/") if path.is_absolute() else path, os.open("/" if path.is_absolute() else ".", _DIR_FLAGS)
    fd = start
    try:
        for part in rel.parts:
            if part in ("..", "/"):
                raise Refused(f"{path}: '..' is not followed")
            if part == ".":
                continue
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise Refused(f"{path}: {part} is not a plain folder ({exc.strerror})") from None
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file(dir_fd: int, name: str, *, owner: int | Iterable[int], cap: int | None) -> tuple[int, os.stat_result]:
    """(fd, stat) of regular file `name` in folder `dir_fd`: not a link, one hard link, owned by
    `owner` (a uid or several), at most `cap` bytes. Raises Refused (FileNotFoundError when it is
    simply missing)."""
    owners = {owner} if isinstance(owner, int) else set(owner)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        try:
            mode = os.lstat(name, dir_fd=dir_fd).st_mode
            why = _kind(mode)
        except OSError:
            why = exc.strerror
        raise Refused(f"{name} refused: {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{name} refused: {_kind(st.st_mode)}")
        if st.st_nlink != 1:
            raise Refused(f"{name} refused: a hard link ({st.st_nlink} names)")
        if st.st_uid not in owners:
            raise Refused(f"{name} refused: owned by uid {st.st_uid}, not by the sandbox")
        if cap is not None and st.st_size > cap:
            raise Refused(f"{name} refused: {st.st_size} bytes is over the {cap}-byte cap")
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def _read_n(fd: int, n: int) -> bytes:
    """Up to n bytes into one preallocated buffer (the file may shrink or grow meanwhile)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k <= 0:
            break
        got += k
    view.release()
    del buf[got:]
    return bytes(buf)


def read_file(dir_fd: int, name: str, *, owner: int | Iterable[int], cap: int) -> bytes:
    """The whole file (see open_file for the checks); Refused when over `cap`."""
    fd, st = open_file(dir_fd, name, owner=owner, cap=cap)
    try:
        return _read_n(fd, min(st.st_size, cap))
    finally:
        os.close(fd)


def read_tail(dir_fd: int, name: str, *, owner: int | Iterable[int], size: int) -> tuple[bytes, int]:
    """(last `size` bytes, file length) of a log of any length; checks as open_file, no cap."""
    fd, st = open_file(dir_fd, name, owner=owner, cap=None)
    try:
        start = max(0, st.st_size - size)
        os.lseek(fd, start, os.SEEK_SET)
        return _read_n(fd, st.st_size - start), st.st_size
    finally:
        os.close(fd)


def copy_tree(src_fd: int, dst: Path, *, owner: int | Iterable[int], file_cap: int, total_cap: int,
              prefix: str = "", max_entries: int = 10_000, depth: int = 32) -> tuple[list[tuple[str, int]], list[str]]:
    """Copy the regular files under folder `src_fd` into `dst` (created here, by us), each opened
    by descriptor and checked as in open_file; ([(relative path, size)], warnings). Links, FIFOs,
    devices, sockets, over-cap files and what would pass `total_cap` are left out with a warning.
    The source is never modified (it may be the sandbox's)."""
    copied: list[tuple[str, int]] = []
    warnings: list[str] = []
    state = {"total": 0, "entries": 0}

    def walk(fd: int, rel: str, level: int) -> None:
        try:
            names = sorted(os.listdir(fd))
        except OSError as exc:
            warnings.append(f"artifact folder {rel or '.'} unreadable: {exc.strerror}")
            return
        for name in names:
            state["entries"] += 1
            path = f"{rel}{name}"
            shown = prefix + path
            if state["entries"] > max_entries:
                warnings.append(f"artifacts after {max_entries} entries dropped")
                return
            try:
                mode = os.lstat(name, dir_fd=fd).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                if level >= depth:
                    warnings.append(f"artifact folder {shown} dropped: nested deeper than {depth}")
                    continue
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    warnings.append(f"artifact {shown} refused: not a plain folder")
                    continue
                try:
                    walk(sub, path + "/", level + 1)
                finally:
                    os.close(sub)
                continue
            if len(shown) > 500:
                warnings.append(f"artifact {shown[:80]}… dropped: its path is longer than 500 characters")
                continue
            try:
                src, st = open_file(fd, name, owner=owner, cap=file_cap)
            except FileNotFoundError:
                continue
            except Refused as exc:
                reason = str(exc).split(" refused: ", 1)[-1]
                if "cap" in reason:
                    warnings.append(f"artifact {shown} dropped: {st_size(fd, name)} bytes is over the per-file cap ({file_cap} bytes)")
                else:
                    warnings.append(f"artifact {shown} refused: {reason}; links and special files are never followed")
                continue
            try:
                if state["total"] + st.st_size > total_cap:
                    warnings.append(f"artifact {shown} dropped: the artifacts would exceed the total cap ({total_cap} bytes)")
                    continue
                target = dst / path
                target.parent.mkdir(parents=True, exist_ok=True)
                written = _copy_fd(src, target, st.st_size)
                state["total"] += written
                copied.append((path, written))
            finally:
                os.close(src)

    walk(src_fd, "", 0)
    return copied, warnings


def st_size(dir_fd: int, name: str) -> int:
    try:
        return os.lstat(name, dir_fd=dir_fd).st_size
    except OSError:
        return 0


def _copy_fd(src: int, target: Path, size: int) -> int:
    """Copy at most `size` bytes (the checked size: a file still growing is cut there)."""
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    done = 0
    try:
        while done < size:
            try:
                n = os.sendfile(out, src, None, min(size - done, 1 << 24))
            except OSError:
                chunk = os.read(src, min(size - done, 1 << 20))
                n = os.write(out, chunk) if chunk else 0
            if n <= 0:
                break
            done += n
    finally:
        os.close(out)
    return done
