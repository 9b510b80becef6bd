r"""The zoo's cache: where trained weights live and how they are written, read, locked and checked.

Nothing here knows a recipe; :mod:`course_lib.zoo.registry` builds on it.

* **Folder** (:func:`cache_dir`): ``$COURSE_CACHE_DIR`` if set, else ``.model_cache/`` in the course
  checkout (when the package runs from one), else ``~/.cache/diffusion-course``. ``~`` is expanded
  and a *relative* ``COURSE_CACHE_DIR`` is taken relative to the course checkout (the folder
  holding ``book.toml``), outside a checkout relative to the current folder, so ``make zoo`` (run
  in the checkout) and a notebook (run in ``chapters/``) find the same cache.
* **Names** (:func:`config_key`): ``<name>-<12 hex digits of sha256(name, config, course version,
  ZOO_FORMAT)>.pt``, so a changed recipe never loads old weights.
* **Writes** (:func:`atomic_save`): a temporary file in the same folder, then ``os.replace``; a
  reader never sees half a file. :func:`writable` probes the folder before anything is trained.
* **Reads** (:func:`read_blob`): ``torch.load(weights_only=True)`` (no pickle code execution), the
  stored name and configuration must match, and every floating-point tensor must be finite
  (:func:`nonfinite`); anything else is refused, so the caller rebuilds it.
* **Lock** (:func:`build_lock`): an advisory ``fcntl.flock`` on ``<file>.lock`` beside the cache file;
  a second process that needs the same missing file waits (showing the builder's progress, which
  the builder writes to ``<file>.progress``), then loads what the first one wrote. Without
  ``fcntl`` (Windows) there is no lock, with a one-line note.

Introduced in chapter 00.

>>> config_key("digits_unet", {"steps": 1500}) == config_key("digits_unet", {"steps": 1500})
True
>>> config_key("digits_unet", {"steps": 1500}) != config_key("digits_unet", {"steps": 150})
True
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from course_lib import __version__

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

__all__ = ["ZOO_FORMAT", "atomic_save", "build_lock", "cache_dir", "cached_tensor", "config_key", "nonfinite",
           "read_blob", "repo_root", "writable"]

ZOO_FORMAT = 1  # bump when the file layout changes
_LOCK_NOTE_SHOWN = False


def repo_root() -> Path | None:
    """The course checkout this package runs from (the folder holding ``book.toml``), or None."""
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "book.toml").exists() else None


def cache_dir() -> Path:
    """The cache folder (see the module docstring), absolute; created if missing and possible.

    A folder that cannot be created is returned all the same: :func:`writable` reports it before
    anything is trained.
    """
    env = os.environ.get("COURSE_CACHE_DIR", "").strip()
    root = repo_root()
    if env:
        path = Path(env).expanduser()
        if not path.is_absolute() and root is not None:
            path = root / path
        path = path.resolve()
    else:
        path = root / ".model_cache" if root is not None else Path.home() / ".cache" / "diffusion-course"
    with contextlib.suppress(OSError):
        path.mkdir(parents=True, exist_ok=True)
    return path


def config_key(name: str, config: dict) -> str:
    """The 12 hex digits of sha256 over (name, config, course version, ZOO_FORMAT) that name a cache file."""
    blob = json.dumps({"name": name, "config": config, "version": __version__, "format": ZOO_FORMAT},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def writable(folder: Path) -> str | None:
    """None when a file can be created in ``folder``, else the reason (e.g. 'read-only file system')."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save(obj)`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is readable like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_or_warn(obj: dict, path: Path, what: str) -> bool:
    """:func:`atomic_save`, but a failed write (disk full, read-only folder) only warns; True if written."""
    try:
        atomic_save(obj, path)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        warnings.warn(f"zoo: could not write {path} ({reason}); {what} is used without being cached "
                      f"(free some space or set COURSE_CACHE_DIR to a writable folder)", stacklevel=3)
        return False
    return True


def nonfinite(tensors: dict) -> list[str]:
    """The names of the floating-point tensors of ``tensors`` that hold a NaN or an infinity."""
    return [k for k, v in tensors.items()
            if isinstance(v, torch.Tensor) and v.dtype.is_floating_point and not bool(torch.isfinite(v).all())]


def read_blob(path: Path, name: str, config: dict, *, stacklevel: int = 3, doing: str = "retraining") -> dict | None:
    """The dict stored at ``path`` for (name, config), or None when absent or unusable (with a warning).

    Loaded with ``weights_only=True``; refused when it is not a dict for this name and
    configuration, or when a tensor in its ``state_dict`` or ``tensor`` is not finite.
    """
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("name") != name or blob.get("config") != config:
            raise ValueError("the file's recipe does not match")
        tensors = blob.get("state_dict", {"tensor": blob.get("tensor")})
        if not isinstance(tensors, dict):
            raise ValueError("the file holds no state_dict")
        bad = nonfinite(tensors)
        if bad:
            raise ValueError(f"non-finite weights in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
        return blob
    except Exception as err:  # a corrupt or foreign file is rebuilt, never trusted
        warnings.warn(f"zoo: ignoring unusable cache file {path.name} ({type(err).__name__}: {err}); {doing}",
                      stacklevel=stacklevel)
        return None


# ------------------------------------------------------------------------------------ lock
def lock_path(path: Path) -> Path:
    """``<file>.lock``, the advisory lock beside the cache file ``path``."""
    return path.with_name(path.name + ".lock")


def progress_path(path: Path) -> Path:
    """``<file>.progress``, where the process building ``path`` writes how far it got (JSON)."""
    return path.with_name(path.name + ".progress")


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


@contextlib.contextmanager
def build_lock(path: Path, what: str, *, on_wait: Callable[[Path], object] | None = None,
               poll_seconds: float = 0.5) -> Iterator[bool]:
    """Hold the advisory lock of the cache file ``path`` while building it; yields True if it had to wait.

    A process that finds the lock taken prints one line, then calls ``on_wait(progress_file)``
    every ``poll_seconds`` until the lock is free (the caller shows the builder's progress), then
    holds the lock itself: it should read the file again before building. No lock is taken (and
    False is yielded) when ``fcntl`` is missing or the lock file cannot be created. The lock file
    is removed on release (a process that locked a removed file locks the new one instead).
    """
    global _LOCK_NOTE_SHOWN
    if fcntl is None:
        if not _LOCK_NOTE_SHOWN:
            print("zoo: no file locks on this system; two processes may train the same model", file=sys.stderr)
            _LOCK_NOTE_SHOWN = True
        yield False
        return
    lock, waited, fd = lock_path(path), False, None
    try:
        while fd is None:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_flock(fd):
                if not waited:
                    print(f"zoo: {what} is being built by another process; waiting for it (not training it "
                          "twice)", file=sys.stderr, flush=True)
                    waited = True
                while not _try_flock(fd):
                    if on_wait is not None:
                        on_wait(progress_path(path))
                    time.sleep(poll_seconds)
            if not _same_file(fd, lock):  # the holder removed it on release: lock the new file instead
                os.close(fd)
                fd = None
    except OSError:
        if fd is not None:
            os.close(fd)
        yield False
        return
    try:
        yield waited
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # before unlocking, so a waiter on this file sees it is gone and retries
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def cached_tensor(name: str, config: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A tensor computed once and cached like the models (samples of an expensive sampler, say).

    The file is ``<cache>/<name>-<hash of config>.pt``, written atomically and loaded with
    ``weights_only=True``; a corrupt file, one for another configuration or one holding NaN or
    infinite values is recomputed. Two processes that need the same missing tensor compute it
    once (the second waits for the first's file). A folder that cannot be written to only warns.
    ``config`` must be JSON-able and must determine the result (include the seed, the
    sampler and the model's zoo name and profile).

    Args:
        name: a short name for the file.
        config: the JSON-able description of what ``compute`` returns.
        compute: called without arguments when the cache has no usable file.

    Introduced in chapter 05.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty file-name-safe string, got {name!r}")
    try:
        key = config_key(name, config)
    except TypeError as err:
        raise ValueError(f"config must be JSON-able: {err}") from None
    path = cache_dir() / f"{name}-{key}.pt"

    def cached() -> torch.Tensor | None:
        blob = read_blob(path, name, config, stacklevel=5, doing="recomputing")
        if blob is not None and not isinstance(blob.get("tensor"), torch.Tensor):
            warnings.warn(f"zoo: ignoring unusable cache file {path.name} (the file holds no tensor); recomputing",
                          stacklevel=4)
            return None
        return None if blob is None else blob["tensor"]

    tensor = cached()
    if tensor is not None:
        return tensor
    problem = writable(path.parent)
    if problem:
        warnings.warn(f"zoo: the cache folder {path.parent} is not writable ({problem}); {name} is computed "
                      "but not cached", stacklevel=2)
    with build_lock(path, repr(name)) if not problem else contextlib.nullcontext(False) as waited:
        tensor = cached() if waited else None
        if tensor is None:
            tensor = compute()
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"compute() must return a torch.Tensor, got {type(tensor).__name__}")
            tensor = tensor.detach().cpu().contiguous()
            if nonfinite({"tensor": tensor}):
                warnings.warn(f"zoo: {name} holds NaN or infinite values; it is returned but not cached",
                              stacklevel=4)
            elif not problem:
                save_or_warn({"name": name, "config": config, "tensor": tensor, "version": __version__}, path, name)
    return tensor
