"""The service's one seam onto the search side: an index (memory-mapped), the model that made its
codes (loaded once), and the searches the API offers, answered as plain dicts.

Everything the HTTP layer needs from ``search`` / ``features`` goes through :class:`Searcher`, so
a change of the search API (or another engine behind it) is a change here only.

Threads: the web server runs searches in a thread pool. The index is read-only; the net is not
(a forward pass writes its blobs), so encoding holds a lock.
"""
import io
import threading
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..encode import THRESHOLD, EncodeError, Model
from ..hamming import unpack_codes
from ..search import DEFAULT_RADIUS, load_index, milvus, workflow
from .params import ServeError, format_code, parse_code, parse_int, search_options

MAX_K = 1000          # results per answer: a bound on the work and the answer's size
MAX_PIXELS = 40_000_000  # an uploaded image's pixels (decompression bombs are refused)
THUMBNAIL = 128       # longest side of a thumbnail, pixels
THUMBNAIL_CACHE = 4096


def decode_image(data, channels=3, max_pixels=MAX_PIXELS):
    """Uploaded bytes -> H x W x 3 RGB (or H x W gray) uint8, as the encoder reads image files."""
    if not data:
        raise ServeError("image: the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as pil:
            width, height = pil.size
            if width * height > max_pixels:
                raise ServeError(f"image: {width} x {height} pixels is more than the "
                                 f"{max_pixels:,} this service decodes")
            pil.load()
            return np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    except UnidentifiedImageError:
        raise ServeError("image: not an image in a format this service reads (PNG, JPEG, GIF, "
                         "BMP, TIFF, WebP...)") from None
    except ServeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ServeError(f"image: not a readable image ({err})") from None


def class_names(index, names_file=None):
    """Names of the labels: a file's lines, else the index's own (recorded at indexing, or the
    class sub-folders it was built from), else None."""
    if names_file is not None:
        names = [line.strip() for line in Path(names_file).read_text().splitlines()]
        return [n for n in names if n] or None
    return workflow.index_class_names(index)


class Searcher:
    """An index and its model, searched as the API asks.

    index_path: the index file (memory-mapped).
    model: a :class:`dlbhc_caffe.encode.Model`; None takes the one recorded in the
        index (with ``trust``, the command line's (allow_layers, allow_missing_weights));
        ``False`` serves without one (searches by id and code only).
    """

    def __init__(self, index_path, model=None, backend="auto", names_file=None, max_k=MAX_K,
                 default_radius=DEFAULT_RADIUS, trust=((), False)):
        self.index_path = Path(index_path)
        self.index = load_index(self.index_path)
        if self.index.ntotal == 0:
            raise ServeError(f"{self.index_path}: the index is empty: nothing to serve")
        self.index.rows_of(self.index.ids[:1])  # build the id lookup now, not in a request
        self.max_k = int(max_k)
        self.default_radius = int(default_radius)
        self.classes = class_names(self.index, names_file)
        if model is None:
            # only a model beside the index: a crafted index must not pick files elsewhere
            model = Model.recorded_beside(self.index_path, self.index.meta)
            if model is None:
                raise EncodeError(f"{self.index_path}: the index records no model: give --run "
                                  f"or --deploy/--model, or --no-model (search by id and code "
                                  f"only)")
            model = model.trusting(*trust)
        self.model = model or None
        self.encoder = None
        if self.model is not None:
            self.encoder = self.model.encoder(backend=backend, batch_size=1)
            self._check_model()
        self._lock = threading.Lock()
        # the search itself: (index, codes, fc7, k, fine, radius) -> one list of hits per query;
        # another engine with that signature (Milvus) replaces it here and nowhere else
        self.query = workflow.query_features
        self.engine = "index"
        self._connection = None
        self._thumbnail = lru_cache(maxsize=THUMBNAIL_CACHE)(self._make_thumbnail)

    def use_milvus(self, connection, collection=None, nprobe=16):
        """Answer the Hamming searches from a Milvus collection holding this index's codes (a
        :func:`dlbhc_caffe.search.milvus.connect` connection; :meth:`close` closes it); fc7
        re-ranking, ids, paths and thumbnails still read the local index."""
        name = collection or milvus.collection_name(self.index_path)
        milvus.check_collection(connection, name, self.index)
        self.query = partial(milvus.query, connection, name, nprobe=nprobe)
        self.engine, self._connection = "milvus", connection

    def close(self):
        """Close the Milvus connection (stopping the embedded server this process started)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _check_model(self):
        latent, fc7 = self.encoder.forward(np.zeros((1, *self._input_shape()), np.float32))
        if latent.shape[1] != self.index.bits:
            raise EncodeError(f"the model gives {latent.shape[1]}-bit codes but "
                              f"{self.index_path} holds {self.index.bits}-bit codes: serve it "
                              f"with the model that built it")
        if self.index.fc7 is not None and fc7.shape[1] != self.index.fc7_dim:
            raise EncodeError(f"the model's fc7 is {fc7.shape[1]} wide but {self.index_path}'s "
                              f"is {self.index.fc7_dim}: serve it with the model that built it")

    def _input_shape(self):
        transform = self.encoder.transform
        return (transform.channels, *transform.crop)

    # ------------------------------------------------------------ facts

    def info(self):
        meta = self.index.meta or {}
        model = self.model.to_meta() if self.model is not None else meta.get("model")
        return {"images": self.index.ntotal, "bits": self.index.bits, "model": model,
                "index": self.index_path.name, "engine": self.engine,
                "fc7": self.index.fc7_dim, "labels": self.index.labels is not None,
                "classes": self.classes, "fine": self.index.fc7 is not None,
                "upload": self.encoder is not None, "max_k": min(self.max_k, self.index.ntotal),
                "default_radius": self.default_radius, "source": meta.get("source"),
                "created": meta.get("created")}

    # ------------------------------------------------------------ queries

    def _options(self, values):
        return search_options(values, self.index.ntotal, self.index.bits, self.max_k,
                              self.default_radius)

    def _row(self, value):
        item = parse_int("id", value)
        try:
            return int(self.index.rows_of([item])[0]), item
        except (KeyError, OverflowError):
            raise ServeError(f"id: {item} is not in the index", status=404) from None

    def _answer(self, query, codes, fc7, k, fine, radius):
        if fine and self.index.fc7 is None:
            raise ServeError("fine: the index holds no fc7 features, so only the Hamming "
                             "ranking is available")
        if fine and fc7 is None:
            raise ServeError("fine: a search by code has no fc7 features to re-rank with: "
                             "search by image or id, or leave fine off")
        codes = np.asarray(codes, np.uint8).reshape(1, -1)
        fc7 = None if fc7 is None else np.asarray(fc7, np.float32).reshape(1, -1)
        hits = self.query(self.index, codes, fc7, k=k, fine=fine, radius=radius)[0]
        answer = {"query": query, "k": k, "fine": fine, "radius": radius if fine else None,
                  "results": [self._hit(hit) for hit in hits]}
        query["code"], query["code_hex"] = format_code(codes[0])
        if fine:
            lims, _, _ = self.index.within(codes, radius)
            answer["within_radius"] = int(lims[1])
            # coarse_to_fine: fewer than k within the radius -> the pool is the Hamming top k
            answer["fallback"] = int(lims[1]) < k
        return answer

    def _hit(self, hit):
        result = {"id": hit.id, "path": hit.path, "label": hit.label, "distance": hit.hamming}
        if hit.euclidean is not None:
            result["fc7_distance"] = hit.euclidean
        return result

    def search_id(self, values):
        """Search from a database item (its code, and its fc7 for the fine search)."""
        k, fine, radius = self._options(values)
        row, item = self._row(values.get("id"))
        label = None if self.index.labels is None else int(self.index.labels[row])
        query = {"kind": "id", "id": item, "label": label,
                 "path": self.index.paths_of([row])[0]}
        fc7 = None if self.index.fc7 is None else self.index.fc7[row]
        codes = unpack_codes(np.ascontiguousarray(self.index.packed[row:row + 1]),
                             self.index.bits)
        return self._answer(query, codes, fc7, k, fine, radius)

    def search_code(self, values):
        """Search from a code given as bits or hex (Hamming ranking only: no fc7)."""
        k, fine, radius = self._options(values)
        code = parse_code(values.get("code"), self.index.bits)
        return self._answer({"kind": "code", "label": None}, code, None, k, fine, radius)

    def search_image(self, data, values, filename=None):
        """Search from uploaded image bytes, encoded by the model."""
        k, fine, radius = self._options(values)
        if self.encoder is None:
            raise ServeError("image: this service runs without a model (--no-model): search by "
                             "id or code")
        transform = self.encoder.transform
        pixels = decode_image(data, transform.channels)
        try:
            batch = transform.prepare_image(pixels)[np.newaxis]
        except EncodeError as err:
            raise ServeError(f"image: {err}") from None
        with self._lock:
            latent, fc7 = self.encoder.forward(batch)
        codes = (latent > THRESHOLD).astype(np.uint8)
        query = {"kind": "image", "label": None, "filename": filename,
                 "size": [int(pixels.shape[1]), int(pixels.shape[0])]}
        return self._answer(query, codes, fc7 if fc7.shape[1] else None, k, fine, radius)

    # ------------------------------------------------------------ thumbnails

    def thumbnail(self, value):
        """PNG bytes of a database item's thumbnail, read from the index's own path for it."""
        row, item = self._row(value)
        return self._thumbnail(row, item)

    def _make_thumbnail(self, row, item):
        path = self.index.paths_of([row])[0]
        if not path or not Path(path).is_file():
            raise ServeError(f"id {item}: its image {path or '(no path)'} is not a file here",
                             status=404)
        try:
            with Image.open(path) as pil:
                pil.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG: decode at reduced size
                picture = pil.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
                Image.DecompressionBombError) as err:
            raise ServeError(f"id {item}: {path} is not a readable image ({err})",
                             status=404) from None
        picture.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        picture.save(out, "PNG")
        return out.getvalue()
