"""Atomic file and directory writes, and the JSON sidecars that say what a file is.

Every file the toolkit writes goes through here: a temp file in the same directory, fsync,
then `os.replace`, so a crash or a Ctrl-C never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from scratchlm.errors import ScratchLMError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give outputs the usual umask-based mode."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def temp_owner() -> str:
    """`<host>-<pid>`: put in temp file names, so that a later run can tell a dead writer's leftovers."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process (or cannot tell: leave its file alone)
    return True


def sweep_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files `atomic_write` (and scratch directories named the same way) left next to
    `path` when its writer was killed (SIGKILL, power loss): `.<name>.<host>-<pid>.<random>.tmp` of this
    host whose process is gone. A live writer's, another host's, or a name not of this form is left
    alone. Returns what was deleted."""
    path = Path(path)
    host = socket.gethostname().replace(".", "_")
    removed = []
    prefix = f".{path.name}."
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner = p.name[len(prefix) : -len(".tmp")].rsplit(".", 1)[0]  # "<host>-<pid>"
        h, _, pid = owner.rpartition("-")
        if h == host and pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                if p.is_dir():  # a scratch directory (model pull's GGUF assembly)
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
    return removed


# Errors of writing data (not of finding or opening a file): a write() that fails with one of these says only
# "No space left on device", without the file, so the writer adds it (`named_write_errors`).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) report one


def _write_errno(e: BaseException) -> int | None:
    """The errno of a write error without a file name in `e` or the exceptions it wraps (torch.save raises a
    RuntimeError whose context is the OSError; safetensors a SafetensorError saying "(os error 28)")."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e.errno if e.errno in WRITE_ERRNOS and e.filename is None else None
        m = _OS_ERROR_TEXT.search(str(e))
        if m and int(m.group(1)) in WRITE_ERRNOS:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def named_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a write error that names no file (a full disk, a quota, a read-only remount), also one that a
    library wrapped in its own exception type, as an OSError naming `path`; the CLI prints it as one line,
    `scratchlm: error: No space left on device: <path>`."""
    try:
        yield
    except Exception as e:
        code = _write_errno(e)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file next to `path` (named for its writer: see `sweep_stale_temps`); on success fsync and
    rename it over `path`. A failed write (a full disk) removes the temp file and names `path`."""
    path = Path(path)
    if path.is_dir():
        raise ScratchLMError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{temp_owner()}.", suffix=".tmp", dir=path.parent)
    try:
        with named_write_errors(path):
            with os.fdopen(fd, mode, encoding=encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            _normal_mode(Path(tmp), is_dir=False)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory that becomes `path` only if the block finishes.

    An existing `path` is an error unless `overwrite`; then it is replaced only after the new
    directory is complete (old moved aside, new renamed in, old deleted).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ScratchLMError(f"{path} already exists (pass --force / overwrite=True to replace it)")
    if path.exists() and not path.is_dir():
        raise ScratchLMError(f"{path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _normal_mode(tmp, is_dir=True)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "dir")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning a missing or malformed file into a clear error about `what`."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchLMError(f"{path} is not a valid {what} (bad JSON: {e})") from None


def check_input_file(path: str | os.PathLike, what: str = "input file") -> Path:
    """A readable, non-empty regular file, or a clear error saying which of those it is not."""
    path = Path(path)
    if not path.exists():
        raise ScratchLMError(f"{what} not found: {path}")
    if path.is_dir():
        raise ScratchLMError(f"{what} {path} is a directory, expected a file")
    if path.stat().st_size == 0:
        raise ScratchLMError(f"{what} {path} is empty")
    return path


LOCK_FILE = ".scratchlm.lock"


class DirLock:
    """An exclusive lock on an output directory (`<dir>/.scratchlm.lock`, an OS file lock via `fcntl.flock`),
    so that two processes never write one run or pipeline output at once. The kernel releases it when the
    process dies, so a killed run leaves no stale lock behind.

        with DirLock(out_dir, "a training run"):
            ...
    """

    def __init__(self, directory: str | os.PathLike, what: str):
        self.dir, self.what, self.fd = Path(directory), what, None

    def acquire(self) -> DirLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no OS lock to take (documented: concurrent runs are then unguarded)
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise ScratchLMError(
                f"{self.dir} is in use by another scratchlm process (pid {holder}): wait for it to finish, "
                f"or use another output directory for {self.what}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}, {self.what}".encode())  # who holds it, for the message above
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_writable(path: str | os.PathLike, what: str = "output", file: bool = False) -> None:
    """Error now, before any expensive work, if `path` (a file or directory to be written) cannot be created
    there: its parent is a file, read-only, or otherwise refuses a new file; with `file`, also if `path` is
    an existing directory."""
    if file and Path(path).is_dir():
        raise ScratchLMError(f"cannot write the {what} {path}: it is a directory")
    parent = Path(path).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise ScratchLMError(f"cannot write the {what} {path}: {e.strerror or e} ({parent})") from None
