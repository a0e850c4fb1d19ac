"""The `jitkern` command: warmup, cache, info, inspect, selftest, bench.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the parser's ``run(args)``
returns the exit status.  Failures print one line on stderr and exit 1 (``--debug`` shows the
traceback).  Modules import torch and the compilers only inside their commands, so ``--help`` and an
already-warm ``warmup`` start fast.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__

EXAMPLES = """\
Examples:
  jitkern warmup --preset llama-3-8b --arch gfx906      # fill the kernel cache for a model
  jitkern cache list                                    # what is cached, by kernel name
  jitkern info                                          # GPUs, backends, compilers, settings
  jitkern inspect --all --preset llama-3-8b --arch gfx906
  jitkern selftest                                      # correctness on the local GPU
Run `jitkern COMMAND --help` for a command's options and examples.
"""


def _passthrough(name: str, module: str, needs_gpu: bool, help_: str, example: str):
    """selftest / bench: thin wrappers over jitkern.<module>.main(argv) (written separately)."""

    def run(args) -> int:
        if needs_gpu:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(f"{name} needs a GPU, and torch sees none "
                                   f"(torch {torch.__version__}; ROCm or CUDA build with a visible device)")
        import importlib

        try:
            mod = importlib.import_module(f"jitkern.{module}")
        except ImportError as e:
            raise RuntimeError(f"`jitkern {name}` is not available in this install "
                               f"(cannot import jitkern.{module}: {e})") from None
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return int(mod.main(argv) or 0)

    def add_parser(sub) -> None:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=f"Examples:\n{example}All arguments go to jitkern.{module}.main unchanged; "
                                  f"`jitkern {name} -- --help` lists them.\n")
        p.add_argument("argv", nargs=argparse.REMAINDER, help=f"arguments for jitkern.{module}")
        p.set_defaults(run=run)

    return add_parser


def build_parser() -> argparse.ArgumentParser:
    from . import cli_cache, cli_info, cli_inspect, warmup

    parser = argparse.ArgumentParser(prog="jitkern", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jitkern {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    warmup.add_parser(sub)
    cli_cache.add_parser(sub)
    cli_info.add_parser(sub)
    cli_inspect.add_parser(sub)
    _passthrough("selftest", "selftest", True, "check every kernel against the reference on the local GPU",
                 "  jitkern selftest\n  jitkern selftest --no-bench > report.txt\n")(sub)
    _passthrough("bench", "bench", False, "time the kernels (GEMV, prefill) against torch",
                 "  jitkern bench\n  jitkern bench --out results --ms 1,8,512\n")(sub)
    return parser


def _one_line(e: BaseException) -> str:
    from .compiler import CompileError

    if isinstance(e, CompileError):          # what failed, the compiler's first error, where the rest is
        log = [ln.strip() for ln in e.log.splitlines() if ln.strip()]
        first = next((ln for ln in log if "error" in ln.lower()), log[0] if log else "no compiler log")
        return f"compiling {e.name} for {e.arch} failed: {first} (--debug shows the full log and source)"
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    known = (ValueError, OSError, RuntimeError, LookupError)
    return first if isinstance(e, known) and first else f"{type(e).__name__}: {first}"


PASSTHROUGH = ("selftest", "bench")


def _split(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """selftest/bench hand every later argument to their own parser (argparse would reject them);
    a lone --help still shows ours, `-- --help` theirs."""
    for i, tok in enumerate(argv):
        if not tok.startswith("-"):
            if tok in PASSTHROUGH and argv[i + 1:] not in (["-h"], ["--help"]):
                return argv[:i + 1], argv[i + 1:]
            break
    return argv, None


def main(argv: list[str] | None = None) -> int:
    head, rest = _split(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(head)
    if rest is not None:
        args.argv = rest
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("jitkern: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"jitkern {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
