"""Run a pycaffe script on the torch backend, unchanged:

    python -m dlbhc_caffe.pycaffe script.py [args...]
    python -m dlbhc_caffe.pycaffe -m module [args...]

`import caffe` in the script (and in what it imports) gives dlbhc_caffe.pycaffe; the script runs
as __main__ with sys.argv and sys.path[0] set as `python script.py args...` sets them.
"""
import os
import runpy
import sys

USAGE = "usage: python -m dlbhc_caffe.pycaffe SCRIPT.py [ARGS...] | -m MODULE [ARGS...]"


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    from . import bind  # noqa: PLC0415

    bind()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f"dlbhc_caffe.pycaffe: cannot open script '{script}': no such file", file=sys.stderr)
        return 2
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
