"""Downloads: checksums, --from DIR, file:// URLs, mirrors in turn, resume after an interruption."""
import hashlib
import http.server
import threading

import pytest

from dlbhc_caffe.datasets.download import (ChecksumError, DownloadError, Resource, fetch,
                                           parse_checksum, verify)

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
WRONG_MD5 = "md5:" + "0" * 32


class _Server:
    """A local HTTP server that honours Range and can cut the first transfer short."""

    def __init__(self, files, cut_first_at=None):
        self.files = files
        self.cut_first_at = cut_first_at
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append((self.path, self.headers.get("Range")))
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if outer.cut_first_at is not None:
                    cut, outer.cut_first_at = outer.cut_first_at, None
                    self.wfile.write(body[start:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _quiet(*_):
    pass


def test_parse_checksum_rejects_malformed():
    assert parse_checksum("SHA1:" + "A" * 40) == ("sha1", "a" * 40)
    for bad in ("c32a1d4ab5d03f1284b67883e8d87530", "md5:123", "crc32:00000000", "md5:" + "g" * 32):
        with pytest.raises(ValueError, match="checksum"):
            parse_checksum(bad)


def test_verify_names_the_file_and_both_sums(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(PAYLOAD)
    assert verify(path, MD5) == MD5[4:]
    with pytest.raises(ChecksumError) as err:
        verify(path, WRONG_MD5)
    assert str(path) in str(err.value) and MD5[4:] in str(err.value) and "0" * 32 in str(err.value)
    messages = []
    assert verify(path, WRONG_MD5, skip=True, log=messages.append) == MD5[4:]
    assert any("--skip-checksum: NOT verified" in m for m in messages)


def test_from_dir_is_verified_and_used_in_place(tmp_path):
    src = tmp_path / "offline"
    src.mkdir()
    (src / "thing.bin").write_bytes(PAYLOAD)
    (src / "other.bin").write_bytes(b"keep me")
    res = Resource("thing.bin", urls=("http://127.0.0.1:9/never",), checksum=MD5)
    got = fetch(res, tmp_path / "dl" / "thing.bin", from_dir=src, log=_quiet)
    assert got == src / "thing.bin"
    with pytest.raises(ChecksumError, match="thing.bin: md5 is"):
        fetch(res, tmp_path / "dl" / "thing.bin", from_dir=src, checksum=WRONG_MD5, log=_quiet)
    assert (src / "thing.bin").read_bytes() == PAYLOAD  # nothing deleted
    assert (src / "other.bin").exists() and not (tmp_path / "dl").exists()
    with pytest.raises(DownloadError, match="missing.bin: not found"):
        fetch(Resource("missing.bin"), tmp_path / "x", from_dir=src, log=_quiet)


def test_file_url_download_then_cached(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "thing.bin").write_bytes(PAYLOAD)
    res = Resource("thing.bin", urls=(f"file://{src}/thing.bin",), checksum=MD5)
    dest = tmp_path / "dl" / "thing.bin"
    assert fetch(res, dest, progress=False, log=_quiet) == dest
    assert dest.read_bytes() == PAYLOAD
    (src / "thing.bin").unlink()  # the cached, verified copy is reused
    messages = []
    assert fetch(res, dest, progress=False, log=messages.append) == dest
    assert not any("downloading" in m for m in messages)


def test_mirrors_tried_in_turn(tmp_path):
    with _Server({"good/thing.bin": PAYLOAD}) as server:
        res = Resource("thing.bin", urls=(server.url + "good/thing.bin",), checksum=MD5)
        messages = []
        dest = fetch(res, tmp_path / "thing.bin", mirrors=[server.url + "missing/"],
                     progress=False, log=messages.append)
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/missing/thing.bin", "/good/thing.bin"]
    assert any("failed" in m for m in messages)


def test_every_url_failing_says_how_to_go_offline(tmp_path):
    with _Server({}) as server:
        res = Resource("thing.bin", urls=(server.url + "a/thing.bin",), checksum=MD5)
        with pytest.raises(DownloadError, match="every URL failed(.|\n)*--from DIR"):
            fetch(res, tmp_path / "thing.bin", progress=False, log=_quiet)


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    cut = 300_000
    with _Server({"thing.bin": PAYLOAD}, cut_first_at=cut) as server:
        res = Resource("thing.bin", urls=(server.url + "thing.bin",), checksum=MD5)
        dest = tmp_path / "thing.bin"
        with pytest.raises(DownloadError):
            fetch(res, dest, progress=False, log=_quiet)
        part = tmp_path / "thing.bin.part"
        assert part.stat().st_size == cut and not dest.exists()
        fetch(res, dest, progress=False, log=_quiet)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/thing.bin", f"bytes={cut}-")


def test_bad_download_is_moved_aside_and_named(tmp_path):
    with _Server({"thing.bin": PAYLOAD}) as server:
        res = Resource("thing.bin", urls=(server.url + "thing.bin",), checksum=WRONG_MD5)
        keep = tmp_path / "unrelated.txt"
        keep.write_text("x")
        with pytest.raises(ChecksumError) as err:
            fetch(res, tmp_path / "thing.bin", progress=False, log=_quiet)
    message = str(err.value)
    assert "thing.bin" in message and MD5[4:] in message and "0" * 32 in message
    assert (tmp_path / "thing.bin.bad").exists() and not (tmp_path / "thing.bin").exists()
    assert keep.exists()
