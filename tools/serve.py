#!/usr/bin/env python
"""Serve an index over HTTP: a JSON search API and a web page (drop an image, see its neighbours).

    python tools/serve.py --index my.index                      # the model recorded in the index
    python tools/serve.py --index my.index --run runs/digits_small_12 --port 8000
    python tools/serve.py --index my.index --deploy D.prototxt --model M.caffemodel \\
        --mean M.binaryproto
    python tools/serve.py --index my.index --engine milvus [--milvus-uri http://host:19530]

Then open http://127.0.0.1:8000/ . The API (JSON; errors are {"error": message} with a 4xx):

    GET  /api/info                              images, bits, model, classes
    GET  /api/search?id=ID&k=10[&fine=1&radius=2]   search from a database item
    GET  /api/search?code=BITS_OR_HEX&k=10      search from a code
    POST /api/search  multipart: image=@FILE [k, fine, radius]   search with an image
    GET  /api/image/ID                          an item's thumbnail

The index is memory-mapped and the model loaded once, in one process. It listens on 127.0.0.1
unless --host says otherwise. With --engine milvus the Hamming searches go to the Milvus collection
that `tools/search.py export --to milvus` filled (fc7 re-ranking still reads the index file).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import cli  # noqa: E402
from dlbhc_caffe.encode import (EncodeError, add_model_options, model_given,  # noqa: E402
                                resolve_model)
from dlbhc_caffe.search import DEFAULT_RADIUS, milvus  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--index", required=True, metavar="INDEX", help="index file to serve")
    g = add_model_options(p, "model (default: the one recorded in the index)")
    g.add_argument("--no-model", action="store_true",
                   help="serve without a model: searches by id and code only, no uploads")
    p.add_argument("--backend", choices=("auto", "caffe", "torch"), default="auto",
                   help="engine that runs the net (default auto)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest request body, MB (default 10)")
    p.add_argument("--max-k", type=int, default=1000, help="most results per search (default 1000)")
    p.add_argument("--radius", type=int, default=DEFAULT_RADIUS,
                   help=f"default Hamming radius of the fine search (default {DEFAULT_RADIUS})")
    p.add_argument("--classes", metavar="FILE",
                   help="class names, one a line in label order (default: the class sub-folders "
                        "the index was built from, when there are)")
    p.add_argument("--engine", choices=("index", "milvus"), default="index",
                   help="who answers the Hamming search: the index file (default) or the Milvus "
                        "collection exported from it")
    p.add_argument("--milvus-uri", metavar="URI",
                   help="Milvus server for --engine milvus (default: start the embedded one, "
                        "data in out/milvus)")
    p.add_argument("--collection", metavar="NAME",
                   help="Milvus collection (default: named after the index file)")
    p.add_argument("--nprobe", type=int, default=16,
                   help="clusters searched when the collection's index is BIN_IVF_FLAT")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    return p


def model_from_args(args):
    """The model to serve with: given, recorded in the index (None), or none (False)."""
    if args.no_model:
        if model_given(args):
            raise EncodeError("--no-model and a model (--run/--deploy/--model) contradict each "
                              "other")
        return False
    return resolve_model(args, required=False)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_k < 1 or args.radius < 0:
        raise EncodeError("--max-upload-mb and --max-k must be positive, --radius non-negative")
    from dlbhc_caffe import serve  # noqa: PLC0415 (imports the web framework)

    searcher = serve.Searcher(args.index, model=model_from_args(args), backend=args.backend,
                              names_file=args.classes, max_k=args.max_k,
                              default_radius=args.radius,
                              trust=(args.allow_layer, args.allow_missing_weights))
    try:
        if args.engine == "milvus":
            _use_milvus(searcher, args)
        info = searcher.info()
        print(f"serving {args.index}: {info['images']} images, {info['bits']}-bit codes, "
              f"{'model loaded' if info['upload'] else 'no model'}, engine {info['engine']}; "
              f"http://{args.host}:{args.port}/", flush=True)
        serve.serve(searcher, host=args.host, port=args.port,
                    max_upload=int(args.max_upload_mb * 1024 * 1024), log_level=args.log_level)
    finally:
        searcher.close()  # stops the embedded Milvus server this process started
    return 0


def _use_milvus(searcher, args):
    connection = milvus.connect(args.milvus_uri)
    try:
        searcher.use_milvus(connection, args.collection, nprobe=args.nprobe)
    except BaseException:
        connection.close()
        raise


if __name__ == "__main__":
    sys.exit(cli.run(main, "serve.py"))
