"""The `tao-qc` command line.

Each verb lives in `tao_qc/commands/` and is imported only when it runs, so `tao-qc --help` never
pays for torch or modelopt. Every error a user can cause is one line on stderr with exit code 2;
a failed accuracy check exits 1; `--debug` shows tracebacks.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from tao_qc.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, TaoQcError
from tao_qc.version import __version__

# verb -> "module:attribute"; modules are imported on first use.
COMMANDS = {
    "compile": ("tao_qc.commands.compile:compile_command", "Quantize an ONNX (or PyTorch) model through the pass pipeline."),
    "quantize": ("tao_qc.commands.quantize:quantize_command", "Quantize a PyTorch model in-framework (torchao, modelopt.pytorch)."),
    "sensitivity": ("tao_qc.commands.sensitivity:sensitivity_command", "Rank nodes by what quantizing them costs the accuracy metric."),
    "compare": ("tao_qc.commands.compare:compare_command", "Compare an FP32 and a quantized model on the same inputs."),
    "inspect": ("tao_qc.commands.inspect:inspect_command", "Summarize one model or dump, or diff two."),
    "bench": ("tao_qc.commands.bench:bench_command", "Measure latency and throughput of one or more models."),
    "evaluate": ("tao_qc.commands.evaluate:evaluate_command", "Evaluate a (quantized) PyTorch artifact on labelled data."),
    "inference": ("tao_qc.commands.evaluate:inference_command", "Run a (quantized) PyTorch artifact on data."),
    "spec": ("tao_qc.commands.spec:spec_group", "Validate a spec, or write a commented starter spec."),
}

_debug = False


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._available(name):
            return None
        module, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table above, so listing verbs imports none of them.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0].split(":")[0]
        return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tao-qc")
@click.option("-v", "--verbose", count=True, help="More output (-v: debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(verbose: int, quiet: bool, debug: bool) -> None:
    """tao-qc: post-training quantization (INT8/FP8) for vision models.

    \b
    Examples:
      tao-qc spec init q.yaml                  # a commented starter spec
      tao-qc spec validate q.yaml              # check it, print it normalized
      tao-qc compile model.onnx --spec q.yaml  # quantize an ONNX model
    """
    global _debug
    _debug = debug
    from tao_qc.console import setup_logging

    setup_logging(-1 if quiet else verbose)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="tao-qc", standalone_mode=False)
    except TaoQcError as exc:
        if _debug:
            raise
        click.echo(f"tao-qc: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_BAD_INPUT
    except click.exceptions.Abort:
        click.echo("tao-qc: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("tao-qc: interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence for a one-line message
        if _debug:
            raise
        click.echo(f"tao-qc: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
