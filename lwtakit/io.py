"""File helpers: writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import csv
import glob
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from lwtakit.errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = check_output_file(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# The files a staged command wrote into its output folder, one relative path a line: the next run into the same
# folder removes those it does not write again (stale plots of layers no longer dissected), and nothing else.
MANIFEST = ".lwtakit-outputs"


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; when the block succeeds, its files replace the last run's in ``out``.

    A command that fails half-way therefore leaves ``out`` as it was (no partial report next to an old one). On
    success, files an earlier staged run wrote (listed in ``out/.lwtakit-outputs``) and this one did not are removed;
    files of any other origin are kept, with a warning when they sit in a folder the report writes (e.g. ``plots/``
    of a report made before the list existed), as they may be stale.
    """
    out = Path(out)
    ensure_writable_dir(out)
    remove_stale_stages(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=f".{os.getpid()}.partial", dir=out.parent))
    try:
        yield stage
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_stages(out: Path) -> list[Path]:
    """Remove the staging folders of ``out`` that a killed command left beside it (``.<name>.*.<pid>.partial``
    whose process is gone: kill -9 skips the cleanup), with a note on stderr; a live process's stage is kept."""
    import sys

    removed = []
    for stage in out.parent.glob(f".{glob.escape(out.name)}.*.partial"):
        pid = stage.name.removesuffix(".partial").rsplit(".", 1)[-1]
        if stage.is_dir() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    if removed:
        print(f"note: removed {len(removed)} unfinished output folder(s) of an interrupted run beside {out} "
              f"(e.g. {removed[0].name})", file=sys.stderr)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or no way to tell: keep its folder
    return True


def _publish(stage: Path, out: Path) -> None:
    """Move the files of ``stage`` into ``out``, drop our stale files there and record the new list."""
    written = sorted(src.relative_to(stage).as_posix() for src in stage.rglob("*") if not src.is_dir())
    previous = _manifest(out)
    for rel in written:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, dst)
    for rel in sorted(previous - set(written)):
        with contextlib.suppress(FileNotFoundError):
            (out / rel).unlink()
        _drop_empty_parents(out / rel, out)
    with atomic_write(out / MANIFEST) as fh:
        fh.write("".join(f"{rel}\n" for rel in written))
    folders = {Path(rel).parent for rel in written} - {Path(".")}
    foreign = sorted(p.relative_to(out).as_posix() for folder in folders for p in (out / folder).iterdir()
                     if p.is_file() and p.relative_to(out).as_posix() not in written)
    if foreign:
        warnings.warn(f"{out} keeps {len(foreign)} file(s) this command did not write and may be stale "
                      f"(e.g. {foreign[0]}); remove them if they are not yours", stacklevel=3)


def _manifest(out: Path) -> set[str]:
    """Relative paths an earlier staged run wrote into ``out`` (none when it has no list)."""
    path = out / MANIFEST
    if not path.is_file():
        return set()
    # Only plain relative paths inside ``out``: an edited list must not make us delete elsewhere.
    return {line for line in path.read_text(encoding="utf-8").splitlines()
            if line and not Path(line).is_absolute() and ".." not in Path(line).parts}


def _drop_empty_parents(path: Path, root: Path) -> None:
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:  # not empty: other files live there
            return


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or a :class:`UserError` when it is an existing folder (os.replace onto it would fail
    with a traceback, after the work); commands call it up front too."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name (e.g. {path / 'out.csv'})")
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path, checked before any work and without creating anything: a :class:`UserError` when it, or
    the nearest part of it that exists, is a file, or that part is not writable (found only after the work, when
    the report is written, it used to waste the whole run)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} is a file, not a folder; give a folder name (e.g. "
                        f"{path.with_suffix('')}_report)")
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor) or p == Path("."))
    if not existing.is_dir():
        raise UserError(f"cannot create output folder {path}: {existing} is a file; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output folder {existing} is not writable; choose a writable folder")
    return path


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or raise a :class:`UserError` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {path}: {exc.strerror}; choose a writable folder") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"output folder {path} is not writable; choose a writable folder")
    return path


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection); a leading quote makes it
# text. Cells that already start with quotes before such a character get one more, so that reading strips exactly one.
_FORMULA_START = ("=", "+", "-", "@")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape_cell(value: Any) -> Any:
    """``value`` safe for a spreadsheet: text starting with ``= + - @`` (after any quotes) gets a leading ``'``;
    numbers, including negative ones written as text, are left as they are."""
    if not isinstance(value, str):
        return value
    if value.lstrip("'")[:1] in _FORMULA_START and not _is_number(value):
        return "'" + value
    return value


def unescape_cell(text: str) -> str:
    """The value :func:`escape_cell` was given (read back from our own CSV)."""
    if text.startswith("'") and text.lstrip("'")[:1] in _FORMULA_START:
        return text[1:]
    return text


def _escaped(rows: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield {k: escape_cell(v) for k, v in row.items()}


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) to ``path`` atomically; columns default to the keys of the first row in order.
    Text cells are escaped for spreadsheets (:func:`escape_cell`); :func:`read_csv` undoes it."""
    rows = list(rows)
    if columns is None:
        columns = list(rows[0].keys()) if rows else []
    with atomic_write(path, newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_escaped(rows))
    return Path(path)


def append_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Append ``rows`` to the CSV at ``path`` atomically (old content + new rows, then rename).

    The whole file is rewritten, so a crash mid-write leaves the previous complete file in place.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8-sig") if path.exists() else ""
    with atomic_write(path, newline="", encoding="utf-8") as fh:
        if old:
            fh.write(old)
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        if not old:
            writer.writeheader()
        writer.writerows(_escaped(rows))
    return path


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` (or by a spreadsheet: a UTF-8 byte-order mark is dropped) into a
    list of dicts (values are strings, unescaped)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [{k: unescape_cell(v) if isinstance(v, str) else v for k, v in row.items()}
                for row in csv.DictReader(fh)]


def read_table(path: str | os.PathLike, what: str, required: Sequence[str], integers: Sequence[str] = (),
               optional_integers: Sequence[str] = ()) -> list[dict[str, str]]:
    """:func:`read_csv`, checked before any work uses the rows: the ``required`` columns exist, and every row's
    ``integers`` cells (and the non-empty ``optional_integers`` cells) are integers. A failure is a
    :class:`UserError` naming ``what`` the file is, the file, and for a bad cell its line."""
    if not Path(path).is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        rows = read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {what} {path} ({type(exc).__name__}: {exc}); give a UTF-8 CSV file") from None
    missing = [c for c in required if rows and c not in rows[0]]
    if missing:
        raise UserError(f"{what} {path} lacks column(s) {', '.join(missing)}; it needs {', '.join(required)}")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        for column in (*integers, *optional_integers):
            value = row.get(column)
            if (value or column in integers) and not _is_int(value):
                raise UserError(f"{path}, line {line}: {column} is {value!r}, not an integer; fix or remove the row")
    return rows


def _is_int(value: Any) -> bool:
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True
