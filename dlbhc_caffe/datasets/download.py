"""Downloads that resume, show progress and are verified; offline copies with `--from DIR`.

A `Resource` is a file name, the URLs it can be fetched from (mirrors first) and its published
checksum ("md5:<hex>", "sha1:<hex>", "sha256:<hex>"). `fetch` returns a verified local path:

- from `from_dir` (files downloaded elsewhere, for offline machines), verified too;
- or a copy already in the download folder that verifies;
- or a download into `<dest>.part`, resumed with an HTTP Range request when a `.part` is left
  from an interrupted run, tried on each URL in turn, verified, then renamed to `dest`.

A wrong checksum raises ChecksumError naming the file and both sums; nothing else is deleted (a
freshly downloaded file that fails is moved aside to `<dest>.bad` so the next run fetches again).

>>> parse_checksum("MD5:C32A1D4AB5D03F1284B67883E8D87530")
('md5', 'c32a1d4ab5d03f1284b67883e8d87530')
"""
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from ..errors import DlbhcError

ALGORITHMS = ("md5", "sha1", "sha256")
CHUNK = 1 << 20
TIMEOUT_S = 60


class ChecksumError(DlbhcError):
    """A file whose checksum is not the expected one."""


class DownloadError(DlbhcError, OSError):
    """A file that could not be fetched from any of its URLs."""


@dataclass(frozen=True)
class Resource:
    """A file to fetch: its name, URLs (tried in order) and published checksum ("algo:hex")."""

    filename: str
    urls: tuple = ()
    checksum: str = None
    size: int = None  # bytes, for messages only


def parse_checksum(text):
    """("md5"|"sha1"|"sha256", lower-case hex) from "algo:hex"."""
    algo, sep, digest = str(text).strip().partition(":")
    algo, digest = algo.lower(), digest.lower()
    lengths = {"md5": 32, "sha1": 40, "sha256": 64}
    if not sep or algo not in lengths:
        raise ValueError(f"checksum {text!r}: expected 'md5:<hex>', 'sha1:<hex>' or "
                         "'sha256:<hex>'")
    if len(digest) != lengths[algo] or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"checksum {text!r}: a {algo} is {lengths[algo]} hex digits")
    return algo, digest


def file_checksum(path, algo="sha256"):
    """The hex digest of a file."""
    digest = hashlib.new(algo)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path, checksum, skip=False, log=print):
    """Check `path` against "algo:hex"; returns the actual digest.

    With `skip`, a mismatch is reported loudly instead of raised (a modified mirror).
    """
    algo, expected = parse_checksum(checksum)
    actual = file_checksum(path, algo)
    if actual == expected:
        return actual
    if skip:
        warn_loudly(log, f"--skip-checksum: NOT verified: {path} has {algo} {actual}, the published "
                   f"{algo} is {expected}; using it anyway")
        return actual
    raise ChecksumError(f"{path}: {algo} is {actual}, expected {expected}")


def warn_loudly(log, message):
    """A warning the eye cannot miss, through `log`."""
    log("!" * 78)
    log(f"WARNING: {message}")
    log("!" * 78)


def _urls(resource, mirrors):
    """Mirrors first (a URL ending in '/' is a folder holding the file), then the defaults."""
    urls = []
    for mirror in mirrors or ():
        mirror = str(mirror)
        urls.append(mirror + resource.filename if mirror.endswith("/") else mirror)
    urls.extend(resource.urls)
    return urls


def download(url, dest, progress=True, timeout=TIMEOUT_S):
    """Fetch `url` into `dest`, resuming from `<dest>.part` when one is there; returns dest.

    Not verified here; the `.part` file stays on failure so the next call resumes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "dlbhc-caffe"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the range is past the end: start over
            part.unlink()
            return download(url, dest, progress, timeout)
        raise
    with response:
        status = getattr(response, "status", None)
        if offset and status != 206:
            offset = 0  # the server (or a file:// URL) ignored the range: whole file again
        length = response.headers.get("Content-Length")
        total = int(length) + offset if length and length.isdigit() else None
        mode = "ab" if offset else "wb"
        with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=dest.name, disable=not progress,
                                          file=sys.stderr, leave=False) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes "
                            f"(kept {part}; run again to resume)")
    os.replace(part, dest)
    return dest


def fetch(resource, dest, from_dir=None, mirrors=(), checksum=None, skip_checksum=False,
          progress=True, log=print):
    """A verified local copy of `resource`; see the module docstring.

    dest: where a download lands. from_dir: take `resource.filename` from this folder instead of
    the network (verified and used in place). checksum: overrides the published one
    ("algo:hex"; None keeps it; a resource without one is not verified).
    """
    dest = Path(dest)
    expected = checksum or resource.checksum

    def check(path, origin):
        if not expected:
            log(f"{path}: no published checksum to verify it against")
            return
        try:
            digest = verify(path, expected, skip=skip_checksum, log=log)
        except ChecksumError as err:
            if origin == "download":
                bad = path.with_name(path.name + ".bad")
                os.replace(path, bad)
                hint = f"downloaded file moved to {bad}"
            elif origin == "from":
                hint = f"the copy given with --from {from_dir}"
            else:
                hint = "an earlier download; delete it to fetch it again"
            raise ChecksumError(f"{err} ({hint}; if it is a modified copy on purpose, pass "
                                "--skip-checksum)") from None
        if digest == parse_checksum(expected)[1]:
            log(f"{path}: {parse_checksum(expected)[0]} ok")

    if from_dir is not None:
        source = Path(from_dir) / resource.filename
        if not source.is_file():
            raise DownloadError(f"{source}: not found (--from {from_dir} must hold "
                                f"{resource.filename})")
        check(source, "from")
        return source

    if dest.is_file():
        check(dest, "cached")
        return dest

    urls = _urls(resource, mirrors)
    if not urls:
        raise DownloadError(f"{resource.filename}: no URL to fetch it from; use --from DIR")
    failures = []
    for url in urls:
        log(f"downloading {url}" + (f" ({resource.size / 1e6:.0f} MB)" if resource.size else ""))
        try:
            download(url, dest, progress=progress)
            break
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
            failures.append(f"  {url}: {getattr(err, 'reason', None) or err}")
            log(f"  failed: {failures[-1].split(': ', 1)[1]}")
    else:
        raise DownloadError(f"{resource.filename}: every URL failed:\n" + "\n".join(failures)
                            + f"\ndownload it by hand and pass --from DIR (the folder holding "
                            f"{resource.filename})")
    check(dest, "download")
    return dest

