"""Downloading dataset files into the cache, verified against a registry of sizes and hashes.

A file is streamed into a temporary file next to its destination, checked
(byte count against the server's Content-Length, then the registry's size and
hash) and only then renamed into place, so the cache never holds a truncated
or corrupted file under a valid name.
"""
import dataclasses
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request

CHUNK = 1 << 16


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


def _fetch(url, tmp, resource, progress, timeout):
    """Stream ``url`` into the open file ``tmp``; raise DownloadError if the body is not the size announced."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        announced = int(announced) if announced and announced.isdigit() else None
        total = announced if announced is not None else resource.size
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=resource.filename,
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                tmp.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if announced is not None and received != announced:
        raise DownloadError(f"download of {url} was truncated: received {received} of {announced} bytes")


def _makedirs(folder):
    """Create ``folder`` and its missing parents; return the ones created, outermost first."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    return missing[::-1]


def download(resource, folder, progress=True, timeout=60):
    """Fetch ``resource`` into ``folder`` (trying each mirror), verify it, and return its path.

    Nothing is left behind on failure: the temporary file is deleted, and so are
    the folders this call created while they are still empty.
    """
    dest = os.path.join(folder, resource.filename)
    created = _makedirs(folder)
    failures = []
    try:
        for url in resource.urls:
            fd, tmp_path = tempfile.mkstemp(prefix=f".{resource.filename}.", suffix=".part", dir=folder)
            try:
                with os.fdopen(fd, "wb") as tmp:
                    _fetch(url, tmp, resource, progress, timeout)
                problem = verify(tmp_path, resource)
                if problem is None:
                    os.replace(tmp_path, dest)
                    return dest
                failures.append(f"{url}: corrupted download ({problem})")
            except DownloadError as exc:
                failures.append(str(exc))
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
                failures.append(f"{url}: {reason}")
            finally:
                if os.path.exists(tmp_path):
                    os.remove(tmp_path)
    finally:
        for path in reversed(created):  # innermost first; a folder that has gained files stays
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
    raise DownloadError(f"could not download {resource.filename} (nothing was saved to {folder}):\n  "
                        + "\n  ".join(failures)
                        + f"\nWithout a network, copy {resource.filename} into {folder} by hand.")
