"""What every command-line tool does at its edge: one line per error, one exit code per kind.

`run(main, prog)` calls a tool's `main()` and turns what escapes it into the project's promise:
a `DlbhcError` or an OS error (missing file, read-only folder, full disk) prints
``<prog>: error: <message>`` and exits 2; Ctrl-C prints ``<prog>: interrupted`` and exits 130.
No traceback reaches the user; a bug (any other exception) still shows its traceback, because
hiding it would hide the bug.
"""
import sys

from .errors import EXIT_ERROR, EXIT_INTERRUPTED, DlbhcError


def error_line(err):
    """One line for `err`: OS errors name the path, as `open` says it, without errno noise."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split("\n")) or type(err).__name__


def run(main, prog, argv=None):
    """Run `main(argv)` and return its exit code, reporting package and OS errors in one line."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DlbhcError, OSError) as err:
        print(f"{prog}: error: {error_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    return 0 if code is None else code
