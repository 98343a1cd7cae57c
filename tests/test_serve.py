"""The search service: its JSON API against the library's own searches, bad input answered with a
4xx and a message (in-process and over real HTTP), thumbnails only from the index's paths, the
tool's startup errors, and a short load run for correctness (no errors; timing is the
benchmark's job: benchmarks/bench_serve.py).

The index is conftest's ``serve_sample``: the embedded digits as PNG files, indexed by the small
net at random weights on the torch backend.
"""
import http.client
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlbhc_caffe.search import load_index, workflow
from dlbhc_caffe.serve import Searcher, create_app, sample
from dlbhc_caffe.serve.params import format_code

ROOT = Path(__file__).resolve().parents[1]
# Starlette's TestClient prefers the httpx2 fork; httpx (pinned) serves it as well
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module")
def searcher(serve_sample):
    return Searcher(serve_sample["index"], backend="torch")


@pytest.fixture(scope="module")
def client(searcher):
    from starlette.testclient import TestClient  # noqa: PLC0415

    with TestClient(create_app(searcher)) as test_client:
        yield test_client


def png_bytes(path):
    return Path(path).read_bytes()


def a_digit(serve_sample, label=3):
    return sorted((Path(serve_sample["images"]) / str(label)).glob("*.png"))[0]


def library_hits(index, codes, fc7, k, fine=False, radius=2):
    hits = workflow.query_features(index, codes, fc7, k=k, fine=fine, radius=radius)[0]
    return [(h.id, h.hamming) + ((round(h.euclidean, 4),) if fine else ()) for h in hits]


def served_hits(answer, fine=False):
    return [(r["id"], r["distance"]) + ((round(r["fc7_distance"], 4),) if fine else ())
            for r in answer["results"]]


# ---------------------------------------------------------------- the API

def test_info_gives_the_index_facts(client, serve_sample):
    info = client.get("/api/info").json()
    assert (info["images"], info["bits"], info["fc7"]) == (1797, 12, 64)
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["model"]["weights"] == serve_sample["model"].weights
    assert info["fine"] and info["upload"] and info["max_k"] == 1000


@pytest.mark.parametrize("fine", [False, True])
def test_search_by_id_is_the_library_search(client, searcher, fine):
    index = searcher.index
    for item in (0, 77, 1500):
        answer = client.get("/api/search", params={"id": item, "k": 25,
                                                   "fine": str(fine).lower()}).json()
        row = index.rows_of([item])[0]
        expected = library_hits(index, index.codes[row:row + 1],
                                index.fc7[row:row + 1] if fine else None, 25, fine)
        assert served_hits(answer, fine) == expected
        assert answer["query"]["label"] == int(index.labels[row])
        first = answer["results"][0]
        assert set(first) == {"id", "path", "label", "distance"} | ({"fc7_distance"} if fine
                                                                   else set())
        assert first["path"] == index.paths_of(index.rows_of([first["id"]]))[0]
        assert first["label"] == int(index.labels[index.rows_of([first["id"]])[0]])


@pytest.mark.parametrize("fine", [False, True])
def test_upload_is_encoded_as_the_image_file_would_be(client, searcher, serve_sample, fine):
    path = a_digit(serve_sample)
    answer = client.post("/api/search", files={"image": (path.name, png_bytes(path))},
                         data={"k": "10", "fine": "1" if fine else "0", "radius": "3"}).json()
    features = searcher.model.encoder(backend="torch").encode_images([path])
    expected = library_hits(searcher.index, features.latent, features.fc7, 10, fine, radius=3)
    assert served_hits(answer, fine) == expected
    assert answer["query"]["code"] == format_code(features.codes[0])[0]
    assert answer["query"]["filename"] == path.name and len(answer["results"]) == 10


def test_search_by_code_bits_or_hex(client, searcher):
    index = searcher.index
    bits, hexa = format_code(index.codes[42])
    by_bits = client.get("/api/search", params={"code": bits, "k": 5}).json()
    by_hex = client.post("/api/search", json={"code": hexa, "k": 5}).json()
    assert by_bits["results"] == by_hex["results"]
    assert served_hits(by_bits) == library_hits(index, index.codes[42:43], None, 5)
    assert by_bits["results"][0]["distance"] == 0


def test_fine_says_when_the_pool_fell_back(client, searcher):
    index = searcher.index
    row = index.rows_of([5])[0]
    lims, _, _ = index.within(index.codes[row:row + 1], 0)
    exact = int(lims[1])  # items with the very same code
    short = client.get("/api/search", params={"id": 5, "k": exact + 1, "fine": 1,
                                              "radius": 0}).json()
    assert short["fallback"] is True and short["within_radius"] == exact
    assert len(short["results"]) == exact + 1  # the Hamming top k, re-ranked by fc7
    wide = client.get("/api/search", params={"id": 5, "k": 10, "fine": 1, "radius": 12}).json()
    assert wide["fallback"] is False and wide["within_radius"] == 1797
    coarse = client.get("/api/search", params={"id": 5, "k": 10}).json()
    assert "fallback" not in coarse and coarse["radius"] is None


def test_thumbnail_comes_from_the_index_path(client, searcher):
    response = client.get("/api/image/12")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    source = Image.open(searcher.index.paths_of(searcher.index.rows_of([12]))[0])
    assert picture.size == source.size  # 32 x 32 digits are not enlarged
    np.testing.assert_array_equal(np.asarray(picture.convert("RGB")),
                                  np.asarray(source.convert("RGB")))


def test_page_and_its_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


# ---------------------------------------------------------------- bad input, in-process

TEXT = b"this is not an image\n" * 10


def _upload(data, **fields):
    return {"files": {"image": ("query.png", data)}, "data": fields}


@pytest.mark.parametrize("method, url, kwargs, status, message", [
    ("post", "/api/search", _upload(TEXT), 400, "not an image"),
    ("post", "/api/search", _upload(b""), 400, "empty"),
    ("post", "/api/search", {"data": {"k": "3"}, "files": {"other": ("x", b"1")}}, 400,
     "unknown field"),
    ("post", "/api/search", {"content": b"{\"id\": 3,", "headers":
                             {"content-type": "application/json"}}, 400, "malformed"),
    ("post", "/api/search", {"json": [1, 2]}, 400, "must be an object"),
    ("post", "/api/search", {"json": {"id": "x"}}, 400, "id: expected an integer"),
    ("post", "/api/search", {"json": {"id": 3, "k": True}}, 400, "k: expected an integer"),
    ("post", "/api/search", {"content": b"id=3", "headers":
                             {"content-type": "text/plain"}}, 415, "multipart"),
    ("get", "/api/search?id=3&k=0", {}, 400, "k: 0 is out of range"),
    ("get", "/api/search?id=3&k=1000000000", {}, 400, "k: 1000000000 is out of range"),
    ("get", "/api/search?id=3&k=1e3", {}, 400, "k: expected an integer"),
    ("get", "/api/search?id=3&k=", {}, 400, "k: expected an integer"),
    ("get", "/api/search?id=3&radius=13", {}, 400, "radius: 13 is out of range"),
    ("get", "/api/search?id=3&fine=perhaps", {}, 400, "fine: expected true or false"),
    ("get", "/api/search?id=123456", {}, 404, "id: 123456 is not in the index"),
    ("get", "/api/search?id=99999999999999999999999", {}, 400, "id: expected an integer"),
    ("get", "/api/search?id=1&id=2", {}, 400, "given more than once"),
    ("get", "/api/search?id=1&code=000", {}, 400, "one of id"),
    ("get", "/api/search?code=12345", {}, 400, "12 bits (0/1) or 3 hex digits"),
    ("get", "/api/search?code=fff&fine=1", {}, 400, "no fc7 features"),
    ("get", "/api/search?code=fff&kk=3", {}, 400, "unknown field"),
    ("get", "/api/search", {}, 400, "one of id"),
    ("get", "/api/image/abc", {}, 400, "id: expected an integer"),
    ("get", "/api/image/5000", {}, 404, "not in the index"),
    ("get", "/api/nope", {}, 404, "no such page"),
    ("delete", "/api/search", {}, 405, "DELETE is not allowed"),
])
def test_bad_requests_get_a_4xx_with_a_message(client, method, url, kwargs, status, message):
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.get("/api/search", params={"id": 3, "k": 2}).status_code == 200


def test_a_decompression_bomb_is_refused(client):
    out = io.BytesIO()
    Image.new("1", (8000, 8000)).save(out, "PNG")  # 64 megapixels in a few kB
    response = client.post("/api/search", **_upload(out.getvalue()))
    assert response.status_code == 400 and "pixels" in response.json()["error"]


def test_without_a_model_uploads_are_refused(serve_sample):
    from starlette.testclient import TestClient  # noqa: PLC0415

    with TestClient(create_app(Searcher(serve_sample["index"], model=False))) as plain:
        assert plain.get("/api/info").json()["upload"] is False
        response = plain.post("/api/search", **_upload(TEXT))
        assert response.status_code == 400 and "--no-model" in response.json()["error"]
        assert plain.get("/api/search", params={"id": 9}).status_code == 200


# ---------------------------------------------------------------- over real HTTP

def raw_get(port, path):
    """A GET with the path sent as written (clients normally resolve ../ first)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def chunked_upload(megabytes):
    """A multipart body with an image field of ``megabytes`` MB, sent in chunks (no length)."""
    yield (b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
           b"Content-Type: image/png\r\n\r\n")
    for _ in range(megabytes):
        yield b"\0" * (1 << 20)
    yield b"\r\n--b--\r\n"


@pytest.fixture(scope="module")
def live(serve_sample, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    with sample.LocalServer(serve_sample["index"], ["--backend", "torch"], log=log) as server:
        yield server


@pytest.mark.slow
def test_bad_input_over_http_and_the_service_keeps_serving(live, serve_sample):
    import httpx  # noqa: PLC0415

    good = png_bytes(a_digit(serve_sample))
    with httpx.Client(base_url=live.url, timeout=60) as http:
        def post(data, **fields):
            return http.post("/api/search", files={"image": ("q.png", data)}, data=fields)

        cases = [
            (post(good[:len(good) // 2]), 400, "truncated"),
            (post(TEXT), 400, "not an image"),
            (post(b"\0" * (50 * 1024 * 1024)), 413, "at most 10,485,760"),
            (http.post("/api/search", content=chunked_upload(50),
                       headers={"content-type": "multipart/form-data; boundary=b"}),
             413, "more than"),                                # chunked: no Content-Length
            (post(good, k="0"), 400, "k: 0 is out of range"),
            (post(good, k=str(10 ** 9)), 400, "out of range"),
            (http.post("/api/search", content=b"{nope",
                       headers={"content-type": "application/json"}), 400, "malformed"),
            (http.get("/api/search", params={"id": "1;drop"}), 400, "expected an integer"),
        ]
        for response, status, message in cases:
            assert response.status_code == status, response.text
            assert message in response.json()["error"]
        assert post(good).status_code == 200
    for path in ("/api/image/../../../../etc/passwd", "/api/image/..%2F..%2Fetc%2Fpasswd",
                 "/api/image/%2e%2e/%2e%2e/etc/passwd", "/api/image//etc/passwd",
                 "/static/../../../../etc/passwd", "/static/..%2F..%2F..%2Fetc%2Fpasswd"):
        status, body = raw_get(live.port, path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in body
    status, body = raw_get(live.port, "/api/info")
    assert status == 200 and b'"images":1797' in body


@pytest.mark.slow
def test_short_load_run_has_no_errors(live, serve_sample):
    spec = importlib.util.spec_from_file_location("bench_serve",
                                                  ROOT / "benchmarks" / "bench_serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ids, images = bench.query_material(serve_sample["index"], count=5)
    figures = bench.run_load(live.url, ids, images, clients=4, seconds=3.0, max_requests=400)
    assert figures["errors"] == 0, figures["first_errors"]
    assert figures["requests"] > 0 and set(figures["per_kind"]) <= set(bench.KINDS)


# ---------------------------------------------------------------- the tool

def run_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "serve.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_tool_refuses_what_it_cannot_serve(tmp_path, serve_sample):
    missing = run_tool("--index", str(tmp_path / "none.index"))
    assert missing.returncode == 2 and "none.index" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bare = load_index(serve_sample["index"], mmap=False)
    bare.meta = {}
    bare.save(tmp_path / "bare.index")
    no_model = run_tool("--index", str(tmp_path / "bare.index"))
    assert no_model.returncode == 2 and "--no-model" in no_model.stderr
    other = sample.untrained_model(tmp_path / "m16", bits=16)
    wrong = run_tool("--index", str(serve_sample["index"]), "--deploy", other.deploy,
                     "--model", other.weights, "--backend", "torch")
    assert wrong.returncode == 2 and "16-bit codes" in wrong.stderr
    both = run_tool("--index", str(serve_sample["index"]), "--no-model", "--run", "x")
    assert both.returncode == 2 and "contradict" in both.stderr
