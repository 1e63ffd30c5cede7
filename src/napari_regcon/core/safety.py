"""The one rule for outputs, and the checks that keep a user's files safe.

Every writer (the CLI's commands, the widgets' Save…, the demo, export) follows the same rule:

- an output is never one of the inputs (compared after resolving paths, symbolic and hard links);
- an existing output is refused unless the caller passes ``overwrite`` (the CLI's ``--overwrite``);
- a bundle output ends in ``.pt``;
- while a run writes an output it holds a lock file next to it (``.NAME.lock``, created with
  ``O_EXCL``), so a second run on the same output fails with one sentence instead of both
  reporting success; a lock left by a dead process is taken over;
- the hidden temporary files an interrupted run left next to the output (``.NAME.XXXXXXXX/``,
  ``.NAME.XXXXXXXX.tmp``, ``.NAME.probs-XXXXXXXX/``) are removed by the next run on that output.

Writes themselves stay atomic (temporary sibling + rename, see :mod:`.io` and :mod:`.checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RegconError

if TYPE_CHECKING:
    from .bundle import Bundle

BUNDLE_SUFFIX = ".pt"


def _paths(items: Iterable[str | Path | None]) -> list[Path]:
    return [Path(p) for p in items if p is not None and str(p) != ""]


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (symbolic links resolved, hard links compared)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(out: Path, folder: Path) -> bool:
    """True when ``out`` lies inside the folder ``folder`` (a zarr store given as input, say)."""
    try:
        return folder.is_dir() and out.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def check_output(out: str | Path, inputs: Iterable[str | Path | None] = (), *, overwrite: bool = False,
                 bundle: bool = False, option: str = "--out", may_exist: bool = False) -> Path:
    """Apply the output rule to ``out``; raises RegconError with one sentence when it is broken.

    ``inputs`` are the files the run reads. ``bundle`` requires the ``.pt`` extension. ``may_exist``
    allows an existing output without ``overwrite`` (``--resume`` continues a bundle in place).
    """
    out = Path(out)
    for src in _paths(inputs):
        if same_file(out, src) or _inside(out, src):
            raise RegconError(f"{option} {out} is also an input of this command ({src}); writing it would "
                              "destroy that file, so choose another output name.")
    if bundle and out.suffix.lower() != BUNDLE_SUFFIX:
        raise RegconError(f"{option} {out} must end in {BUNDLE_SUFFIX} (a napari-regcon model bundle).")
    if out.exists() and not overwrite and not may_exist:
        what = "folder" if out.is_dir() else "file"
        raise RegconError(f"{option} {out} already exists; pass --overwrite to replace the {what}, or choose another name.")
    return out


def check_outputs_differ(outputs: Iterable[str | Path | None]) -> None:
    """Refuse two outputs of one command that name the same file."""
    seen: list[Path] = []
    for out in _paths(outputs):
        for other in seen:
            if same_file(out, other):
                raise RegconError(f"The outputs {other} and {out} are the same file; give each output its own name.")
        seen.append(out)


# --- stale temporary files --------------------------------------------------------------------

def _temp_pattern(name: str) -> re.Pattern[str]:
    # tempfile.mkdtemp/mkstemp add 8 characters of [a-z0-9_]; save_bundle adds ".tmp"; the scratch
    # probabilities of a post-processed prediction go to ".probs-" (".crf-" in earlier versions)
    return re.compile(rf"^\.{re.escape(name)}\.(crf-|probs-)?[a-z0-9_]{{8}}(\.tmp)?(\.files)?$")


def stale_temps(out: str | Path) -> list[Path]:
    """The hidden temporary files and folders an interrupted write of ``out`` left next to it."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        return []
    pattern = _temp_pattern(out.name)
    return sorted(p for p in parent.iterdir() if pattern.match(p.name))


def remove_stale_temps(out: str | Path) -> list[Path]:
    """Remove what :func:`stale_temps` finds (call it while holding the output's lock); returns them."""
    removed = stale_temps(out)
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
    return removed


# --- one writer per output ----------------------------------------------------------------------

def lock_path(out: str | Path) -> Path:
    """The lock file that marks ``out`` as being written."""
    out = Path(str(out).rstrip("/"))
    return out.with_name(f".{out.name}.lock")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(lock: Path) -> tuple[int, str]:
    try:
        pid, _, host = lock.read_text().strip().partition("@")
        return int(pid), host
    except (OSError, ValueError):
        return -1, ""


def acquire_lock(out: str | Path) -> Path:
    """Create ``out``'s lock file exclusively; raises RegconError when a live process holds it."""
    lock = lock_path(out)
    if not lock.parent.is_dir():
        raise RegconError(f"Cannot write {out}: the folder {lock.parent} does not exist.")
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, host = _holder(lock)
            if pid == os.getpid() and host == socket.gethostname():
                raise RegconError(f"{out} is written twice by this command; give each output its own name.") from None
            if host == socket.gethostname() and not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    lock.unlink()  # left by a run that was killed: take it over
                continue
            where = f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
            raise RegconError(f"{out} is being written by another napari-regcon run ({where}); wait for it to "
                              f"finish or choose another output (delete {lock} if that run is gone).") from None
        except OSError as err:
            raise RegconError(f"Cannot write {out}: {err.strerror or err}.") from err
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        return lock
    raise RegconError(f"Cannot take the lock {lock} of {out}; delete it if no other run writes there.")


def release_lock(lock: Path) -> None:
    """Remove a lock taken by :func:`acquire_lock` (only when this process still holds it)."""
    pid, _ = _holder(lock)
    if pid == os.getpid():
        with contextlib.suppress(OSError):
            lock.unlink()


@contextlib.contextmanager
def writing(outputs: Iterable[str | Path | None]) -> Iterator[None]:
    """Hold the locks of ``outputs`` (and clear their stale temporary files) for the duration of a run."""
    locks: list[Path] = []
    try:
        for out in _paths(outputs):
            locks.append(acquire_lock(out))
            remove_stale_temps(out)
        yield
    finally:
        for lock in reversed(locks):
            release_lock(lock)


# --- resume and init ----------------------------------------------------------------------------

_KIND_FROM = {"pretrained": "pretrain", "segmentation": "finetune"}


def check_resume(bundle: Bundle | dict, path: str | Path, command: str, steps: int, method: str | None = None) -> None:
    """Refuse a ``--resume`` bundle that cannot continue this run, in one sentence."""
    from .bundle import as_bundle

    bundle = as_bundle(bundle, path)
    want = "pretrained" if command == "pretrain" else "segmentation"
    kind = bundle.kind
    if kind != want:
        hint = " (use --init to start from it)" if command == "finetune" else ""
        raise RegconError(f"{path} is a {kind} bundle (from {_KIND_FROM.get(kind, '?')}), but {command} --resume "
                          f"expects a {want} bundle from an interrupted {command} run{hint}.")
    done_method = bundle.pretext.method
    if command == "pretrain" and method and done_method and done_method != method:
        raise RegconError(f"{path} was pretrained with --method {done_method}, but this run asks for --method "
                          f"{method}; resume with --method {done_method} or start without --resume.")
    if not bundle.training.resumable:
        raise RegconError(f"{path} holds no training state to resume (it is a finished or exported bundle); "
                          "use it as --init instead.")
    done = int(bundle.training.step or 0)
    if steps <= done:
        raise RegconError(f"{path} has already done {done} steps, so --steps {steps} would add nothing; pass "
                          f"--steps larger than {done} to continue training.")


def load_resumed_weights(model: Any, bundle: Bundle | dict) -> None:
    """Load a ``--resume`` bundle's weights, explaining an architecture mismatch in one sentence."""
    from .bundle import as_bundle

    bundle = as_bundle(bundle)
    try:
        model.load_state_dict(bundle.state_dict)
    except RuntimeError:
        m, c = bundle.model, model.config
        raise RegconError(f"The --resume bundle is a {m.ndim}D network (base {m.base}, depth "
                          f"{m.depth}, {m.out_channels} outputs) but this run builds a {c.ndim}D one "
                          f"(base {c.base}, depth {c.depth}, {c.out_channels} outputs); resume with the options "
                          "and labels of the interrupted run.") from None


MAX_CLASSES = 32


def check_class_count(values: list[int], labels: str | Path = "the labels") -> None:
    """Refuse labels with so many values that they are object ids, not classes."""
    if len(values) > MAX_CLASSES:
        raise RegconError(f"{labels} contain {len(values)} label values ({values[0]}..{values[-1]}), which looks like one "
                          f"value per object rather than classes; paint at most {MAX_CLASSES} classes (1 = background, "
                          "2 = first class, ...).")
