"""Downloading dataset files into the cache, verified against a registry of sizes and hashes.

A file is streamed into a temporary file next to its destination, checked
(byte count against the server's Content-Length, then the registry's size and
hash) and only then renamed into place, so the cache never holds a truncated
or corrupted file under a valid name. Each try has an overall deadline besides
the per-read ``timeout``, so a server that trickles bytes cannot hold a download
forever. Temporary files carry their host and process id, so the ones a crashed
download left behind are recognised and removed by the next download.

Mirrors (``$MINIRES_DATA_MIRROR`` or ``minires ... --mirror``: base URLs, comma-separated) are
tried in order before the official hosts, with the same checks. A mirror is laid out like the
cache, ``<base>/<dataset>/<file>``, so a copy of a filled cache folder is a mirror, served over
HTTP (``python -m http.server``) or read as a folder (``file://`` or a plain path). When every
source fails, the error lists each URL and why it failed, then the files to copy by hand and
the folder to copy them into.
"""
import contextlib
import dataclasses
import hashlib
import http.client
import os
import pathlib
import re
import shutil
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

CHUNK = 1 << 16
MIN_RATE = 16 * 1024  # bytes per second: the default deadline allows a file this slow a download, no slower
GRACE = 120           # seconds the default deadline adds for connecting and a slow start
STALE_AGE = 24 * 3600  # seconds after which a temporary file is stale whoever made it: no download lasts a day
MIRROR_ENV = "MINIRES_DATA_MIRROR"  # comma-separated base URLs tried before the official hosts


class DownloadError(OSError):
    """A download failed, was truncated, or did not match its registered size or hash."""


@dataclasses.dataclass(frozen=True)
class Resource:
    """One file of a dataset: its name on disk, where to fetch it (mirrors in order), and how to check it."""

    filename: str
    urls: tuple
    algorithm: str  # a hashlib name: "md5" or "sha256"
    digest: str     # lowercase hex digest of the file as published
    size: int = None  # bytes, when known

    def __post_init__(self):
        if isinstance(self.urls, str):
            object.__setattr__(self, "urls", (self.urls,))
        object.__setattr__(self, "digest", self.digest.lower())
        hashlib.new(self.algorithm)  # fail early on an unknown algorithm


def cache_dir():
    """The cache folder: ``$MINIRES_DATA`` if set, else ``~/.cache/minires``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("MINIRES_DATA") or "~/.cache/minires"))


def file_hash(path, algorithm):
    """The hex digest of the file at ``path`` under ``algorithm`` (a hashlib name)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path, resource):
    """None if the file at ``path`` has the resource's size and hash, else a sentence saying what is wrong."""
    size = os.path.getsize(path)
    if resource.size is not None and size != resource.size:
        return f"size {size} bytes, expected {resource.size}"
    got = file_hash(path, resource.algorithm)
    if got != resource.digest:
        return f"{resource.algorithm} {got}, expected {resource.digest}"
    return None


def default_deadline(size):
    """Seconds a download of ``size`` bytes may take in all: ``GRACE`` plus its time at ``MIN_RATE``, or an hour."""
    return GRACE + (3600 if size is None else size / MIN_RATE)


def parse_mirrors(text, where=MIRROR_ENV):
    """The base URLs in ``text`` (comma-separated, or a list), in order; a folder becomes a file:// URL.

    Raises ValueError naming ``where`` for an entry that is neither an http://, https:// or
    file:// URL nor a folder path.
    """
    items = text.split(",") if isinstance(text, str) else list(text or ())
    bases = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        scheme = urllib.parse.urlsplit(item).scheme.lower()
        if scheme in ("http", "https", "file"):
            base = item
        elif "://" in item:
            raise ValueError(f"{where}: {item!r} is not a mirror minires can read: give http://, https:// or "
                             "file:// base URLs, or folders, separated by commas")
        else:  # a folder on this machine (a mounted drive, a copied cache)
            base = pathlib.Path(os.path.abspath(os.path.expanduser(item))).as_uri()
        base = base.rstrip("/")
        if base not in bases:
            bases.append(base)
    return tuple(bases)


def mirrors():
    """The mirrors of ``$MINIRES_DATA_MIRROR``, in the order they are tried (none when it is unset)."""
    return parse_mirrors(os.environ.get(MIRROR_ENV, ""))


@contextlib.contextmanager
def using_mirrors(value):
    """Within the block, ``value``'s mirrors replace ``$MINIRES_DATA_MIRROR``'s (None: leave them as they are).

    The variable itself is set, so processes started inside see the same mirrors; it is
    restored on leaving. ``value`` is checked first (a ValueError, before anything changes).
    """
    if value is None:
        yield mirrors()
        return
    bases = parse_mirrors(value, "--mirror")
    before = os.environ.get(MIRROR_ENV)
    os.environ[MIRROR_ENV] = ",".join(bases)
    try:
        yield bases
    finally:
        if before is None:
            os.environ.pop(MIRROR_ENV, None)
        else:
            os.environ[MIRROR_ENV] = before


def sources(resource, mirror_path=None, bases=None):
    """The URLs to try for ``resource``, in order: each mirror's ``<base>/<mirror_path>``, then its own URLs.

    ``mirror_path`` is the file's place in a mirror (default its file name; the datasets use
    ``<dataset>/<file>``, the cache's layout); ``bases`` default to ``mirrors()``.
    """
    path = (mirror_path or resource.filename).lstrip("/")
    urls = [f"{base}/{path}" for base in (mirrors() if bases is None else bases)] + list(resource.urls)
    return list(dict.fromkeys(urls))


def _fetch(url, tmp, resource, progress, timeout, deadline):
    """Stream ``url`` into the open file ``tmp`` within ``deadline`` seconds (None: from the size).

    Raises DownloadError if the body is not the size announced or registered, or
    if the deadline passes. The deadline is checked between reads, each of
    which waits at most ``timeout`` seconds.
    """
    from tqdm.auto import tqdm

    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout if deadline is None else min(timeout, deadline)) as response:
        announced = response.headers.get("Content-Length")
        announced = int(announced) if announced and announced.isdigit() else None
        if announced is not None and resource.size is not None and announced != resource.size:
            raise DownloadError(f"{url}: the server announces {announced} bytes, but {resource.filename} has "
                                f"{resource.size}; it is not the expected file")
        total = announced if announced is not None else resource.size
        if deadline is None:
            deadline = default_deadline(total)
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=resource.filename,
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: response.read1(CHUNK), b""):
                tmp.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if resource.size is not None and received > resource.size:
                    raise DownloadError(f"{url}: the server sent more than the {resource.size} bytes of "
                                        f"{resource.filename}; it is not the expected file")
                elapsed = time.monotonic() - started
                if elapsed > deadline and received != total:
                    raise DownloadError(f"{url}: gave up after {elapsed:.0f} s, the deadline for "
                                        f"{resource.filename}: only {received} of {total or 'unknown'} bytes "
                                        "came (a stalled or very slow server)")
    if announced is not None and received != announced:
        raise DownloadError(f"download of {url} was truncated: received {received} of {announced} bytes")


def owner_tag():
    """``host-pid``: which process made a temporary file, so a later one can tell whether it is still alive."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', socket.gethostname())}-{os.getpid()}"


def _alive(pid):
    if os.name != "posix":  # elsewhere os.kill(pid, 0) would not just ask
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def _stale(name, prefix, suffix, mtime, host):
    """True if the temporary file ``name`` belongs to no running download: its process is gone, or it is old."""
    if time.time() - mtime > STALE_AGE:
        return True
    middle = name[len(prefix):len(name) - len(suffix)]
    tag = middle.rpartition(".")[0]  # "host-pid" before the random part
    owner, _, pid = tag.rpartition("-")
    return owner == host and pid.isdigit() and not _alive(int(pid))


def remove_stale(folder, prefix, suffix):
    """Delete what crashed downloads (or extractions) left in ``folder``: names ``prefix`` + tag + ... + ``suffix``.

    Only files and folders whose process is gone on this host, or that are older
    than ``STALE_AGE``, go: another process's download in progress is left alone.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    host = owner_tag().rpartition("-")[0]
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not _stale(entry.name, prefix, suffix, info.st_mtime, host):
                continue
            if stat.S_ISREG(info.st_mode):
                os.remove(entry.path)
            elif stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path)
        except OSError:  # gone already, or not ours to remove
            pass


def _makedirs(folder):
    """Create ``folder`` and its missing parents; return the ones created, outermost first."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    return missing[::-1]


def _reason(exc):
    """Why a try failed, in the words of the error: the HTTP status, the refused connection, the timeout."""
    if isinstance(exc, urllib.error.HTTPError):
        return str(exc)
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out (no answer)"
    return str(reason) or type(reason).__name__


def copy_by_hand(needed, folder):
    """The closing lines of a failed download: the exact files to copy into ``folder``, and where to get them."""
    width = max(len(r.filename) for r in needed)
    where = os.path.basename(os.path.normpath(folder))
    lines = [f"  {r.filename.ljust(width)}  {r.algorithm} {r.digest}" + ("" if r.size is None else f", {r.size} bytes")
             + f"  {r.urls[0]}" for r in needed]
    return (f"Copy these files by hand into {folder}, then run the command again. Get them from a machine that "
            f"has them (in its cache: ~/.cache/minires/{where}, or $MINIRES_DATA/{where}) or from the official URL "
            "on each line:\n" + "\n".join(lines)
            + f"\nOr set {MIRROR_ENV} (or --mirror) to a mirror, such as a copy of a filled cache folder.")


def download(resource, folder, progress=True, timeout=60, deadline=None, mirror_path=None, needed=None):
    """Fetch ``resource`` into ``folder`` (each mirror first, then its own URLs), verify it, and return its path.

    ``mirror_path`` is the file's place under a mirror's base URL (see ``sources``);
    ``needed``, the files the user has to copy by hand if this one cannot be had (default:
    this one; a dataset names all its missing files). ``timeout`` bounds each wait for the
    server, ``deadline`` each try in all (default: ``default_deadline`` of the file's size).
    Nothing is left behind on failure: a failed try's temporary file is deleted before the
    next source is tried, and so are the folders this call created while they are still
    empty. Temporary files that crashed downloads of this file left in ``folder`` are deleted first.
    """
    urls = sources(resource, mirror_path)  # a bad $MINIRES_DATA_MIRROR fails here, before any folder is made
    dest = os.path.join(folder, resource.filename)
    created = _makedirs(folder)
    prefix = f".{resource.filename}."
    remove_stale(folder, prefix, ".part")
    failures = []
    try:
        for url in urls:
            fd, tmp_path = tempfile.mkstemp(prefix=f"{prefix}{owner_tag()}.", suffix=".part", dir=folder)
            try:
                with os.fdopen(fd, "wb") as tmp:
                    _fetch(url, tmp, resource, progress, timeout, deadline)
                problem = verify(tmp_path, resource)
                if problem is None:
                    os.replace(tmp_path, dest)
                    return dest
                failures.append(f"{url}: corrupted download ({problem})")
            except DownloadError as exc:
                failures.append(str(exc))
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                failures.append(f"{url}: {_reason(exc)}")
            finally:
                if os.path.exists(tmp_path):
                    os.remove(tmp_path)
    finally:
        for path in reversed(created):  # innermost first; a folder that has gained files stays
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
    raise DownloadError(f"could not download {resource.filename} (nothing was saved to {folder}). "
                        f"Tried {len(urls)} URL{'s' if len(urls) > 1 else ''}, in order:\n  "
                        + "\n  ".join(failures) + "\n" + copy_by_hand(needed or [resource], folder))
