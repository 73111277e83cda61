"""The jaxjac command line: a root parser that only registers subcommands.

Each subcommand lives in its own module `jaxjac/cli/<name>.py` exposing
`register(subparsers)` (add its parser) and `run(args) -> int`. Errors a
user can fix (`JaxjacError`, and `OSError` on their files) print one line
`jaxjac: error: ...` and exit 2 (1 when a conversion check fails); `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

from .._errors import ConversionCheckError, JaxjacError, first_line
from ._common import print_error

# Subcommand modules, in the order `jaxjac --help` lists them. A name whose
# module is not written yet is skipped, so that the CLI works while the
# subcommands land one at a time.
SUBCOMMANDS = ("convert", "jacobian", "importance", "demo")


def _subcommand_modules() -> dict[str, ModuleType]:
    modules = {}
    for name in SUBCOMMANDS:
        qualified = f"{__name__}.{name}"
        try:
            modules[name] = importlib.import_module(qualified)
        except ModuleNotFoundError as error:
            if error.name != qualified:  # a real missing dependency inside the module: surface it
                raise
    return modules


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (`jaxjac COMMAND: error: ...`) instead of a usage block first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(modules: dict[str, ModuleType]) -> argparse.ArgumentParser:
    """The root parser: global flags and one subparser per subcommand module."""
    from .. import __version__

    parser = _Parser(
        prog="jaxjac",
        description="Per-sample input Jacobians of PyTorch 1D CNNs, computed in JAX.",
        epilog="Run `jaxjac COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("--version", action="version", version=f"jaxjac {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in modules.values():
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the jaxjac command line; returns the process exit code.

    Called with `argv=None` (the process's own command line: the `jaxjac` script,
    `python -m jaxjac`), it ends by freezing the garbage collector, since the
    process is about to exit (see `_before_exit`).
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before a subcommand runs: while the parser is built or a module loads
        print_error("interrupted")
        return 130
    finally:
        if argv is None:
            _before_exit()


def _before_exit() -> None:
    """Let the interpreter exit without a last garbage collection over every jax and flax object.

    While the interpreter shuts down, its garbage collections walk every object
    still alive (some 150,000 once jax and flax are imported): about 0.3 s at
    the end of every command, spent looking for garbage in memory the process
    is about to hand back anyway. `gc.freeze()` moves those objects out of the
    collector's view; everything else about exiting is unchanged (atexit
    handlers run, files are flushed and closed, objects are finalised as their
    references go).
    """
    import gc

    gc.freeze()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one line each, `jaxjac: warning: ...`, without the source line."""
    print(f"jaxjac: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _main(argv: Sequence[str] | None) -> int:
    modules = _subcommand_modules()
    args = build_parser(modules).parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
            # Libraries' notices to their own developers (torch's, JAX's): noise to a user; --debug shows them.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
        return _run(modules, args, debug)


def _run(modules: dict[str, ModuleType], args: argparse.Namespace, debug: bool) -> int:
    try:
        return int(modules[args.command].run(args) or 0)
    except ConversionCheckError as error:
        if debug:
            raise
        from .._check import format_report  # only reached when torch ran the check

        print(format_report(error.report))
        print_error(str(error))
        return 1
    except JaxjacError as error:
        if debug:
            raise
        print_error(str(error))
        return 2
    except OSError as error:
        if debug:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print_error(f"{where}{error.strerror or error}")
        return 2
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except MemoryError:
        if debug:
            raise
        print_error("out of memory: the inputs or --batch-size / --input-shape are too large for this machine")
        return 2
    except Exception as error:
        if debug or not _xla_out_of_memory(error):
            raise
        print_error(
            f"out of memory: XLA could not allocate what one batch needs ({first_line(error)[:200]}); "
            "pass a smaller --batch-size"
        )
        return 2


def _xla_out_of_memory(error: Exception) -> bool:
    """Whether `error` is XLA's failure to allocate on a device (JAX raises it as a runtime error)."""
    return type(error).__name__ in {"JaxRuntimeError", "XlaRuntimeError"} and "RESOURCE_EXHAUSTED" in str(error)


if __name__ == "__main__":
    sys.exit(main())
