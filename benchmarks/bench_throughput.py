#!/usr/bin/env python
"""Training and forward throughput (images/s) of KevinNet, for every backend available.

    python benchmarks/bench_throughput.py                     # every backend, all cores
    python benchmarks/bench_throughput.py --threads 2 --repeats 7 --json out.json

The net is KevinNet as train.py generates it (CaffeNet conv1..fc7, fc8_kevin of --bits, the
classifier, softmax loss) at 227x227, batch 32, fed by Input layers holding one fixed random batch
(so no data loading is timed). Training = one solver iteration (forward, backward, SGD update with
the paper's momentum and weight decay); forward = one TEST-phase pass of the deploy net (Input ->
fc8_kevin_encode) at the same batch size. Each backend runs in its own process with the same
thread count (OMP/OpenBLAS/MKL threads, and torch.set_num_threads), after --warmup untimed
iterations; the figures are medians over --repeats, with ratios against pycaffe (real Caffe).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def kevinnet_files(folder, bits, batch, classes=10, crop=227):
    """Write the benchmark's train net, solver and deploy net into `folder`; returns paths."""
    from dlbhc_caffe import proto
    from dlbhc_caffe.netgen import caffenet_layers, kevinnet
    from dlbhc_caffe.netgen import layers as L

    folder = Path(folder)
    inputs = [L.input((batch, 3, crop, crop), name="data", top="data"),
              L.input((batch,), name="label", top="label")]
    train_net = kevinnet.hashify("KevinNet_bench", inputs, caffenet_layers(), bits, classes)
    deploy = kevinnet.deploy_net(bits, crop=crop, batch=batch)
    solver = proto.pb.SolverParameter(
        net=str(folder / "train.prototxt"), base_lr=0.001, lr_policy="step", gamma=0.1,
        stepsize=25000, max_iter=50000, momentum=0.9, weight_decay=0.0005, display=0,
        snapshot_prefix=str(folder / "bench"), snapshot_after_train=False)
    paths = {"train": folder / "train.prototxt", "solver": folder / "solver.prototxt",
             "deploy": folder / "deploy.prototxt"}
    proto.write_text(train_net, paths["train"])
    proto.write_text(solver, paths["solver"])
    proto.write_text(deploy, paths["deploy"])
    return paths


def _timed(fn, warmup, repeats):
    """(wall seconds, CPU seconds of all this process's threads) of each timed call.

    On a shared machine the wall time measures the load as much as the engine; the CPU time is
    what the engine itself spent (threads spinning while they wait for each other included)."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times, cpu


def measure(backend_name, *, bits=48, batch=32, warmup=1, repeats=5, threads=None, gpu=None):
    """{train, forward: images/s medians, times} of one backend, in this process."""
    import numpy as np

    from dlbhc_caffe import backends

    engine = backends.get(backend_name)
    if engine.name == "torch":
        import torch

        if threads:
            torch.set_num_threads(int(threads))
    if gpu is None:
        engine.set_mode_cpu()
    else:
        engine.set_mode_gpu()
        engine.set_device(int(gpu))
    engine.set_random_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        paths = kevinnet_files(tmp, bits, batch)
        solver = engine.get_solver(str(paths["solver"]))
        net = solver.net
        net.blobs["data"].data[...] = rng.normal(0, 50, net.blobs["data"].data.shape)
        net.blobs["label"].data[...] = rng.integers(0, 10, net.blobs["label"].data.shape)
        train_times, train_cpu = _timed(lambda: solver.step(1), warmup, repeats)
        del solver, net
        deploy = engine.Net(str(paths["deploy"]), engine.TEST)
        deploy.blobs["data"].data[...] = rng.normal(0, 50, deploy.blobs["data"].data.shape)
        forward_times, forward_cpu = _timed(lambda: deploy.forward(), warmup, repeats)
    return {
        "backend": engine.name,
        "version": getattr(engine, "__version__", None),
        "device": f"GPU {gpu}" if gpu is not None else "CPU",
        "threads": threads,
        "batch": batch,
        "bits": bits,
        "train_images_per_s": batch / statistics.median(train_times),
        "forward_images_per_s": batch / statistics.median(forward_times),
        "train_seconds": train_times,
        "forward_seconds": forward_times,
        "train_cpu_seconds": train_cpu,
        "forward_cpu_seconds": forward_cpu,
        "load_average": os.getloadavg()[0],
    }


def _worker(args):
    result = measure(args.worker, bits=args.bits, batch=args.batch, warmup=args.warmup,
                     repeats=args.repeats, threads=args.threads, gpu=args.gpu)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run(backends_=None, *, bits=48, batch=32, warmup=1, repeats=5, threads=None, gpu=None,
        log=print):
    """Measure each backend (default: every available one) in its own process; returns
    {"results": [...], "ratios": {backend: {train, forward}}, "threads": n, "skipped": {...}}."""
    from dlbhc_caffe import backends

    threads = int(threads or os.cpu_count() or 1)
    names = list(backends_) if backends_ else backends.NAMES
    env = dict(os.environ, **{var: str(threads) for var in THREAD_VARIABLES})
    env.setdefault("GLOG_minloglevel", "2")
    results, skipped = [], {}
    for name in names:
        log(f"[bench] {name}: KevinNet {bits} bits, batch {batch}, 227x227, {threads} threads, "
            f"{warmup} warm-up + {repeats} timed iterations ...")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--bits",
               str(bits), "--batch", str(batch), "--warmup", str(warmup), "--repeats",
               str(repeats), "--threads", str(threads)]
        if gpu is not None:
            cmd += ["--gpu", str(gpu)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            skipped[name] = reason
            log(f"[bench] {name}: not measured ({reason})")
            continue
        results.append(json.loads(line[len("RESULT "):]))
    base = next((r for r in results if r["backend"] == "caffe"), None)
    ratios = {}
    for r in results:
        if base is not None:
            ratios[r["backend"]] = {
                "train": r["train_images_per_s"] / base["train_images_per_s"],
                "forward": r["forward_images_per_s"] / base["forward_images_per_s"]}
    return {"results": results, "ratios": ratios, "threads": threads, "skipped": skipped,
            "bits": bits, "batch": batch, "repeats": repeats}


def format_table(report):
    """The report as a text table."""
    lines = [f"KevinNet {report['bits']} bits, 227x227, batch {report['batch']}, "
             f"{report['threads']} threads (medians of {report['repeats']}; CPU s: seconds of "
             f"all threads per batch)",
             f"{'backend':<8} {'version':<14} {'device':<6} {'train img/s':>12} "
             f"{'forward img/s':>14} {'train x':>8} {'fwd x':>7} {'train CPU s':>12} "
             f"{'fwd CPU s':>10} {'load':>5}"]
    for r in report["results"]:
        ratio = report["ratios"].get(r["backend"])
        lines.append(
            f"{r['backend']:<8} {str(r['version']):<14} {r['device']:<6} "
            f"{r['train_images_per_s']:>12.1f} {r['forward_images_per_s']:>14.1f} "
            f"{_ratio(ratio, 'train'):>8} {_ratio(ratio, 'forward'):>7} "
            f"{statistics.median(r['train_cpu_seconds']):>12.1f} "
            f"{statistics.median(r['forward_cpu_seconds']):>10.1f} {r['load_average']:>5.1f}")
    for name, reason in report["skipped"].items():
        lines.append(f"{name:<8} not measured: {reason}")
    if report["results"] and not report["ratios"]:
        lines.append("(no pycaffe result: ratios need the caffe backend)")
    return "\n".join(lines)


def _ratio(ratio, key):
    return f"{ratio[key]:.2f}" if ratio else "-"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", action="append", choices=("caffe", "torch"),
                   help="measure only this backend (repeatable; default: every available one)")
    p.add_argument("--bits", type=int, default=48)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--repeats", type=int, default=5, help="timed iterations (median taken)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every backend (default: all cores)")
    p.add_argument("--gpu", type=int, default=None, metavar="ID", help="GPU mode on device ID")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.worker:
        return _worker(args)
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--repeats and --batch must be >= 1, --warmup >= 0")
    report = run(args.backend, bits=args.bits, batch=args.batch, warmup=args.warmup,
                 repeats=args.repeats, threads=args.threads, gpu=args.gpu)
    print(format_table(report))
    if args.json:
        from dlbhc_caffe.proto import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode())
    return 0 if report["results"] else 1


if __name__ == "__main__":
    sys.exit(main())
