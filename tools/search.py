#!/usr/bin/env python
"""Index your images with a trained DLBHC net, and query the index.

    python tools/search.py index --run runs/digits_small_12 --folder my_images --out my.index
    python tools/search.py index --deploy D.prototxt --model M.caffemodel --mean mean.binaryproto \\
        --list img_list.txt --out my.index
    python tools/search.py index --run runs/r --list big.txt --out part1.index --shard 1/4 \\
        --fc7 float16
    python tools/search.py merge part1.index part2.index part3.index part4.index --out big.index
    python tools/search.py query --index my.index query.jpg [more.jpg ...] --k 10 [--fine] [--json]
    python tools/search.py faiss --index my.index --out my.faiss
    python tools/search.py export --index my.index --to milvus [--milvus-uri http://host:19530]
    python tools/search.py query --index my.index --engine milvus query.jpg

index: encodes every image (prepare_batch.m's preprocessing) and writes an index holding the
packed codes, the fc7 features (--fc7 float32, float16 or none), the paths and the labels when
the list or folder gives them (a list's `path label` lines, or a folder of class sub-folders).
The model is recorded in the index, so a query needs only --index. The index is written as it
goes (OUT.partial, renamed to OUT when done; memory holds one batch): after a kill, the same
command continues where it stopped. Unreadable images are skipped and listed (--strict stops at
the first). --shard I/N encodes the I-th of N slices of the list; `merge` joins the N shard
indexes into the index one run would have built. An existing --out is refused unless --force.

query: encodes the query images with the index's model, prints each query's top k -- Hamming
ranking, or with --fine the coarse-to-fine search (every item within Hamming distance --radius,
or the Hamming top k when fewer are that close, re-ranked by fc7 distance) -- and writes a PNG
montage of them (--montage; default out/search/<index name>-query.png).

faiss: writes the codes as a faiss IndexBinaryFlat (faiss.write_index_binary).

export --to milvus: writes the codes (BINARY_VECTOR, metric HAMMING, index BIN_FLAT or
BIN_IVF_FLAT) with id, label and path into a Milvus collection (default: an embedded server on
127.0.0.1, or --milvus-uri); `query --engine milvus` searches it (fine re-ranking reads fc7 from
the local --index).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402

from dlbhc_caffe import cli, hamming  # noqa: E402
from dlbhc_caffe import montage  # noqa: E402
from dlbhc_caffe.encode import (EncodeError, Model, add_model_options,  # noqa: E402
                                model_given, resolve_model)
from dlbhc_caffe.fileio import output_lock, refuse_folder  # noqa: E402
from dlbhc_caffe.search import (DEFAULT_RADIUS, builder, load_index, milvus,  # noqa: E402
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
    idx.add_argument("--force", action="store_true",
                     help="replace an existing --out (and start an unfinished build over)")
    idx.add_argument("--quiet", action="store_true", help="no progress bar")
    idx.add_argument("--fc7", choices=("float32", "float16", "none"), default="float32",
                     help="how fc7 is stored for --fine (float16: half the size; none: no --fine)")
    idx.add_argument("--shard", metavar="I/N", type=builder.parse_shard,
                     help="encode only the I-th of N consecutive slices of the list (1/N first)")
    idx.add_argument("--strict", action="store_true",
                     help="stop at the first unreadable image (default: skip and list them)")

    mg = sub.add_parser("merge", help="join shard indexes into one")
    mg.add_argument("shards", nargs="+", metavar="SHARD")
    mg.add_argument("--out", required=True, metavar="INDEX")
    mg.add_argument("--force", action="store_true", help="replace an existing --out")

    q = sub.add_parser("query", help="search an index with query images")
    q.add_argument("--index", required=True, metavar="INDEX",
                   help="the index file (`index` writes it; its model encodes the queries)")
    q.add_argument("images", nargs="+", metavar="IMAGE", help="query image file(s)")
    q.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    q.add_argument("--fine", action="store_true",
                   help="coarse-to-fine: Hamming pool within --radius, re-ranked by fc7")
    q.add_argument("--radius", type=int, default=DEFAULT_RADIUS,
                   help=f"Hamming radius of the --fine pool (default {DEFAULT_RADIUS})")
    q.add_argument("--montage", metavar="PNG",
                   help="montage to write (default out/search/<index name>-query.png)")
    q.add_argument("--force", action="store_true", help="replace an existing --montage")
    q.add_argument("--json", action="store_true",
                   help="print one JSON document (per query: its hits) and write no montage")
    q.add_argument("--engine", choices=("index", "milvus"), default="index",
                   help="search the index file (default) or its Milvus collection (`export`)")
    _milvus_options(q)
    _model_options(q, required=False)

    ex = sub.add_parser("export", help="write the codes into a Milvus collection")
    ex.add_argument("--index", required=True, metavar="INDEX")
    ex.add_argument("--to", choices=("milvus",), required=True)
    ex.add_argument("--milvus-index", choices=("BIN_FLAT", "BIN_IVF_FLAT"), default="BIN_FLAT",
                    help="BIN_FLAT: exact; BIN_IVF_FLAT: --nlist clusters, --nprobe searched")
    ex.add_argument("--nlist", type=int, default=1024)
    ex.add_argument("--batch", type=int, default=10000, help="rows per insert")
    ex.add_argument("--quiet", action="store_true", help="no progress bar")
    _milvus_options(ex)

    f = sub.add_parser("faiss", help="export the codes as a faiss IndexBinaryFlat")
    f.add_argument("--index", required=True, metavar="INDEX")
    f.add_argument("--out", required=True, metavar="FILE")
    f.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def _milvus_options(p):
    p.add_argument("--milvus-uri", metavar="URI",
                   help="an existing Milvus, e.g. http://host:19530 (default: embedded server)")
    p.add_argument("--collection", metavar="NAME",
                   help="collection name (default: from the index file's name)")
    p.add_argument("--nprobe", type=int, default=16, help="BIN_IVF_FLAT clusters searched")


def refuse_existing(path, force):
    refuse_folder(path)  # before any work: a folder cannot take the file
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
        if labels is not None:  # the montage's and the service's class names
            source["classes"] = workflow.folder_classes(args.folder)
    skipped = []
    try:
        out, _ = workflow.build_index_file(
            model, paths, labels, args.out, backend=args.backend, batch_size=args.batch_size,
            fc7=args.fc7, shard=args.shard, strict=args.strict, force=args.force,
            progress=not args.quiet, source=source,
            report=lambda path, why: skipped.append(why),
            allow_missing_weights=args.allow_missing_weights)
    except KeyboardInterrupt:
        partial = Path(f"{args.out}.partial")
        if partial.exists():
            print(f"search.py: the images indexed so far are kept in {partial}; run the same "
                  f"command again to continue", file=sys.stderr)
        raise
    index = load_index(out)
    for why in skipped:
        print(f"skipped: {why}", file=sys.stderr)
    total = index.build.get("skipped", 0) if index.build else 0
    print(f"{out}: {index.ntotal} images, {index.bits}-bit codes, fc7 "
          f"{f'{index.fc7_dim} {index.fc7_dtype}' if index.fc7_dim else 'none'}, labels "
          f"{'yes' if index.labels is not None else 'no'}"
          + (f", shard {args.shard[0]}/{args.shard[1]}" if args.shard else "")
          + (f"; {total} unreadable image(s) skipped" if total else ""))
    return 0


def cmd_merge(args):
    with output_lock(args.out, "merge"):  # a second writer of the same index is refused
        refuse_existing(args.out, args.force)
        out = builder.merge(args.shards, args.out)
    index = load_index(out)
    print(f"{out}: {index.ntotal} images from {len(args.shards)} shards")
    return 0


def _search(args, index, features):
    if args.engine == "milvus":
        conn = milvus.connect(args.milvus_uri)
        try:
            name = args.collection or milvus.collection_name(args.index)
            return milvus.query(conn, name, index, features.latent, features.fc7, k=args.k,
                                fine=args.fine, radius=args.radius, nprobe=args.nprobe)
        finally:
            conn.close()  # stops the embedded server this process started
    return workflow.query_features(index, features.latent, features.fc7, k=args.k,
                                   fine=args.fine, radius=args.radius)


def cmd_query(args):
    index = load_index(args.index)
    if index.ntotal == 0:
        raise EncodeError(f"{args.index}: the index is empty")
    hamming.check_k(args.k, index.ntotal, name="--k", database=args.index, whole=False)
    if args.fine and index.fc7 is None:
        raise EncodeError(f"{args.index} holds no fc7 (built with --fc7 none): --fine needs it")
    out = Path(args.montage) if args.montage else \
        Path("out") / "search" / f"{Path(args.index).stem}-query.png"
    if not args.json:
        refuse_existing(out, args.force)
    named = model_given(args)
    model = resolve_model(
        args, fallback=None if named else Model.recorded_beside(args.index, index.meta))
    if not named:
        print(f"model recorded in {args.index}: {model.deploy} + {model.weights}",
              file=sys.stderr)
    encoder = model.encoder(backend=args.backend, batch_size=args.batch_size,
                            allow_missing_weights=args.allow_missing_weights)
    features = encoder.encode_images(args.images)
    if features.bits != index.bits:
        raise EncodeError(f"the model gives {features.bits}-bit codes but {args.index} holds "
                          f"{index.bits}-bit codes: query with the model that built the index")
    results = _search(args, index, features)
    if args.json:
        print(json.dumps(workflow.results_json(args.images, results)))
        return 0
    print("\n".join(workflow.format_results(args.images, results)))
    rows = workflow.montage_rows(args.images, results,
                                 query_names=[Path(p).name for p in args.images],
                                 class_names=workflow.index_class_names(index))
    fell_back = sum(bool(getattr(hits, "fallback", None)) for hits in results)
    title = (f"coarse-to-fine, radius {args.radius}" if args.fine else "Hamming ranking") + \
        (f" ({fell_back} query(ies) fell back to the Hamming top k)" if fell_back else "") + \
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


def cmd_export(args):
    index = load_index(args.index)
    conn = milvus.connect(args.milvus_uri)
    try:
        name = args.collection or milvus.collection_name(args.index)
        added = milvus.export(conn, name, index, index_type=args.milvus_index, nlist=args.nlist,
                              batch=args.batch, progress=not args.quiet)
    finally:
        conn.close()  # stops the embedded server this process started
    print(f"milvus collection {name}: {index.ntotal} codes ({added} added now), "
          f"{args.milvus_index}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    commands = {"index": cmd_index, "merge": cmd_merge, "query": cmd_query, "faiss": cmd_faiss,
                "export": cmd_export}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(cli.run(main, "search.py"))
