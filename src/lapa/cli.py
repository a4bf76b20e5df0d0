"""`lapa <command> [positional args] [hydra overrides]`: one console command for every stage.

Each command is a function `run(cfg) -> int | None` taking its validated config dataclass. The config
is composed from `lapa/conf/<config>.yaml` with the given Hydra overrides (`key=value`, `group=option`,
`+new_key=value`), so every command works the same way:

    lapa ingest input=videos/ output=shards/ size=128
    lapa train-laq experiment=laq_debug data.train_shards='shards/*.tar'
    lapa sim generate output=sim/ episodes=20

`lapa <command> --help` explains a command and prints its default config; `--cfg` prints the resolved
config (after overrides) and exits.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from dataclasses import dataclass

from lapa import __version__


@dataclass(frozen=True)
class Command:
    summary: str  # one line for `lapa --help`
    target: str  # "module:function" taking the validated config
    config_name: str  # top-level YAML in lapa/conf
    schema: str  # "module:DataclassName"
    positional: tuple[str, ...] = ()  # config keys filled by positional arguments, in order


COMMANDS: dict[str, Command] = {
    "ingest": Command("videos / image folders -> frame-pair WebDataset shards",
                      "lapa.data.ingest:run", "ingest", "lapa.data.ingest:IngestConfig"),
    "train-laq": Command("Stage 1: train the latent action quantiser (Lightning)",
                         "lapa.laq.train:run", "train_laq", "lapa.laq.train:TrainLAQConfig"),
    "convert-laq": Command("import a reference-layout LAQ state dict: lapa convert-laq SRC DST",
                           "lapa.laq.convert:run", "convert_laq", "lapa.laq.convert:ConvertLAQConfig",
                           positional=("src", "dst")),
    "label": Command("write latent-labelled shards with a trained LAQ",
                     "lapa.laq.label:run", "label", "lapa.laq.label:LabelConfig"),
    "eval-laq": Command("measure latent-action quality; writes a report and metrics.json",
                        "lapa.eval.laq_eval:run", "eval_laq", "lapa.eval.laq_eval:EvalLAQConfig"),
    "sim generate": Command("simulator: action-free videos + labelled demonstrations",
                            "lapa.sim.generate:run", "sim_generate", "lapa.sim.generate:GenerateConfig"),
    "sim eval": Command("simulator: closed-loop success rates of a policy",
                        "lapa.eval.closed_loop:run", "sim_eval", "lapa.eval.closed_loop:SimEvalConfig"),
    "demo": Command("the whole pipeline on built-in simulator data (what `make demo` runs)",
                    "lapa.demo:run", "demo", "lapa.demo:DemoConfig"),
}


def _resolve(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"lapa {__version__}: Latent Action Pretraining from videos", "",
             "usage: lapa <command> [args] [key=value ...] [--help] [--cfg]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "Every command takes Hydra overrides (key=value) and --help."]
    return "\n".join(lines)


def _split_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """Longest command name (one or two words) at the head of argv."""
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in COMMANDS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    return None, argv


def _command_help(name: str, cmd: Command) -> str:
    from lapa.config import compose, to_yaml

    doc = inspect.getdoc(_resolve(cmd.target)) or ""
    positional = " ".join(p.upper() for p in cmd.positional)
    text = [f"usage: lapa {name} {positional + ' ' if positional else ''}[key=value ...]", "",
            cmd.summary, ""]
    if doc:
        text += [doc, ""]
    text += [f"Default config (lapa/conf/{cmd.config_name}.yaml, override any key):", "",
             to_yaml(compose(cmd.config_name))]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = _split_command(argv)
    if name is None:
        print(f"lapa: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    if "--help" in rest or "-h" in rest:
        print(_command_help(name, cmd))
        return 0
    print_cfg = "--cfg" in rest
    args = [a for a in rest if a != "--cfg"]
    unknown_flags = [a for a in args if a.startswith("-")]
    if unknown_flags:
        print(f"lapa {name}: unknown option(s) {unknown_flags}; use key=value overrides", file=sys.stderr)
        return 2
    positional = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(positional) > len(cmd.positional):
        print(f"lapa {name}: unexpected argument(s) {positional[len(cmd.positional):]}; "
              "options are key=value overrides", file=sys.stderr)
        return 2
    overrides += [f"{key}={value}" for key, value in zip(cmd.positional, positional)]

    from lapa.config import ConfigError, compose, to_schema, to_yaml

    try:
        cfg = to_schema(compose(cmd.config_name, overrides), _resolve(cmd.schema))
    except ConfigError as err:
        print(f"lapa {name}: invalid config: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # Hydra override/composition errors: a bad group name, a bad override
        if type(err).__module__.startswith(("hydra", "omegaconf")):
            print(f"lapa {name}: invalid overrides: {err}", file=sys.stderr)
            return 2
        raise
    if print_cfg:
        print(to_yaml(cfg))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    status = _resolve(cmd.target)(cfg)
    return int(status or 0)


def console() -> int:
    """Entry point of the `lapa` console script: `main` with a quiet exit when stdout is closed early
    (`lapa ingest --help | head`)."""
    try:
        return main()
    except BrokenPipeError:
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(console())
