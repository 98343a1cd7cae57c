#!/usr/bin/env python
"""Index your images with a trained DLBHC net, and query the index.

    python tools/search.py index --run runs/digits_small_12 --folder my_images --out my.index
    python tools/search.py index --deploy D.prototxt --model M.caffemodel --mean mean.binaryproto \\
        --list img_list.txt --out my.index
    python tools/search.py query --index my.index query.jpg [more.jpg ...] --k 10 [--fine]
    python tools/search.py faiss --index my.index --out my.faiss

index: encodes every image (prepare_batch.m's preprocessing) and writes an index holding the
packed codes, the fc7 features, the paths and the labels when the list or folder gives them (a
list's `path label` lines, or a folder of class sub-folders). The model is recorded in the index,
so a query needs only --index. An existing --out is refused unless --force.

query: encodes the query images with the index's model, prints each query's top k -- Hamming
ranking, or with --fine the coarse-to-fine search (every item within Hamming distance --radius,
or the Hamming top k when fewer are that close, re-ranked by fc7 distance) -- and writes a PNG
montage of them (--montage; default out/search/<index name>-query.png).

faiss: writes the codes as a faiss IndexBinaryFlat (faiss.write_index_binary).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import cli  # noqa: E402
from dlbhc_caffe import montage  # noqa: E402
from dlbhc_caffe.encode import (EncodeError, Model, add_model_options,  # noqa: E402
                                model_given, resolve_model)
from dlbhc_caffe.fileio import output_lock  # noqa: E402
from dlbhc_caffe.proto import ProtoError  # noqa: E402
from dlbhc_caffe.search import (DEFAULT_RADIUS, IndexFormatError, load_index,  # noqa: E402
                                 workflow, write_faiss)


def _model_options(p, required):
    group = add_model_options(p)
    if required:
        group.description = "give --run, or --deploy and --model"
    p.add_argument("--backend", choices=("auto", "caffe", "torch"), default="auto",
                   help="engine that runs the net (default auto: caffe when it imports)")
    p.add_argument("--batch-size", type=int, default=10, help="images per forward pass")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    sub = p.add_subparsers(dest="command", required=True)

    idx = sub.add_parser("index", help="encode images into an index")
    _model_options(idx, required=True)
    source = idx.add_mutually_exclusive_group(required=True)
    source.add_argument("--list", metavar="FILE",
                        help="image list: one `path` or `path label` a line")
    source.add_argument("--folder", metavar="DIR",
                        help="images below DIR (class sub-folders give labels)")
    idx.add_argument("--root", metavar="DIR",
                     help="folder that relative list paths start from (default: the list's)")
    idx.add_argument("--out", required=True, metavar="INDEX", help="index file to write")
    idx.add_argument("--force", action="store_true", help="replace an existing --out")
    idx.add_argument("--quiet", action="store_true", help="no progress bar")

    q = sub.add_parser("query", help="search an index with query images")
    q.add_argument("--index", required=True, metavar="INDEX")
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    q.add_argument("--fine", action="store_true",
                   help="coarse-to-fine: Hamming pool within --radius, re-ranked by fc7")
    q.add_argument("--radius", type=int, default=DEFAULT_RADIUS,
                   help=f"Hamming radius of the --fine pool (default {DEFAULT_RADIUS})")
    q.add_argument("--montage", metavar="PNG",
                   help="montage to write (default out/search/<index name>-query.png)")
    _model_options(q, required=False)

    f = sub.add_parser("faiss", help="export the codes as a faiss IndexBinaryFlat")
    f.add_argument("--index", required=True, metavar="INDEX")
    f.add_argument("--out", required=True, metavar="FILE")
    f.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def refuse_existing(path, force):
    if Path(path).exists() and not force:
        raise EncodeError(f"{path} already exists; use --force to replace it")


def cmd_index(args):
    with output_lock(args.out, "index"):  # a second writer of the same index is refused
        return _index(args)


def _index(args):
    refuse_existing(args.out, args.force)
    model = resolve_model(args)
    if args.list:
        paths, labels = workflow.read_image_list(args.list, args.root)
        source = {"list": str(Path(args.list).resolve())}
    else:
        paths, labels = workflow.scan_images(args.folder)
        source = {"folder": str(Path(args.folder).resolve())}
    index = workflow.build_index(model, paths, labels, backend=args.backend,
                                 batch_size=args.batch_size, progress=not args.quiet,
                                 source=source)
    index.save(args.out)
    print(f"{args.out}: {index.ntotal} images, {index.bits}-bit codes, fc7 "
          f"{index.fc7_dim or 'none'}, labels {'yes' if index.labels is not None else 'no'}")
    return 0


def cmd_query(args):
    index = load_index(args.index)
    if index.ntotal == 0:
        raise EncodeError(f"{args.index}: the index is empty")
    index.check_k(args.k)
    named = model_given(args)
    model = resolve_model(
        args, fallback=None if named else Model.recorded_beside(args.index, index.meta))
    if not named:
        print(f"model recorded in {args.index}: {model.deploy} + {model.weights}",
              file=sys.stderr)
    encoder = model.encoder(backend=args.backend, batch_size=args.batch_size)
    features = encoder.encode_images(args.images)
    if features.bits != index.bits:
        raise EncodeError(f"the model gives {features.bits}-bit codes but {args.index} holds "
                          f"{index.bits}-bit codes: query with the model that built the index")
    results = workflow.query_features(index, features.latent, features.fc7, k=args.k,
                                      fine=args.fine, radius=args.radius)
    print("\n".join(workflow.format_results(args.images, results)))
    out = Path(args.montage) if args.montage else \
        Path("out") / "search" / f"{Path(args.index).stem}-query.png"
    rows = workflow.montage_rows(args.images, results,
                                 query_names=[Path(p).name for p in args.images])
    title = (f"coarse-to-fine, radius {args.radius}" if args.fine else "Hamming ranking") + \
        f", top {args.k} of {index.ntotal}"
    montage.write_montage(out, rows, title=title)
    print(f"montage: {out}")
    return 0


def cmd_faiss(args):
    refuse_existing(args.out, args.force)
    index = load_index(args.index)
    write_faiss(index, args.out)
    print(f"{args.out}: faiss IndexBinaryFlat, d={(index.bits + 7) // 8 * 8}, "
          f"ntotal={index.ntotal}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    commands = {"index": cmd_index, "query": cmd_query, "faiss": cmd_faiss}
    try:
        return commands[args.command](args)
    except (EncodeError, IndexFormatError, ProtoError, FileNotFoundError, ValueError,
            ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli.run(main, "search.py"))
