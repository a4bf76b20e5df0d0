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
import re
import sys
from dataclasses import dataclass
from pathlib import Path

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
    "import-lerobot": Command("a LeRobot dataset (v3/v2) -> robot-step shards: lapa import-lerobot SRC OUTPUT",
                              "lapa.data.lerobot:run", "import_lerobot", "lapa.data.lerobot:ImportLeRobotConfig",
                              positional=("src", "output")),
    "train-laq": Command("Stage 1: train the latent action quantiser (Lightning)",
                         "lapa.laq.train:run", "train_laq", "lapa.laq.train:TrainLAQConfig"),
    "convert-laq": Command("import a reference-layout LAQ state dict: lapa convert-laq SRC DST",
                           "lapa.laq.convert:run", "convert_laq", "lapa.laq.convert:ConvertLAQConfig",
                           positional=("src", "dst")),
    "label": Command("write latent-labelled shards with a trained LAQ",
                     "lapa.laq.label:run", "label", "lapa.laq.label:LabelConfig"),
    "eval-laq": Command("measure latent-action quality; writes a report and metrics.json",
                        "lapa.eval.laq_eval:run", "eval_laq", "lapa.eval.laq_eval:EvalLAQConfig"),
    "train-vla": Command("Stage 2: train the VLA to predict latent actions (Fabric, FSDP2)",
                         "lapa.vla.pretrain:run", "train_vla", "lapa.vla.pretrain:TrainVLAConfig"),
    "finetune": Command("Stage 3: finetune the VLA on a few robot demonstrations (Lightning)",
                        "lapa.vla.finetune:run", "finetune", "lapa.vla.finetune_config:FinetuneConfig"),
    "eval-policy": Command("a policy's actions against recorded robot steps, offline (MSE / L1 per dimension)",
                           "lapa.eval.offline_policy:run", "eval_policy", "lapa.eval.offline_policy:EvalPolicyConfig"),
    "export": Command("a Stage 3 policy's forward pass as ONNX or TorchScript, parity checked",
                      "lapa.policy.graph_export:run", "export", "lapa.policy.graph_export:ExportConfig"),
    "sim generate": Command("simulator: action-free videos + labelled demonstrations",
                            "lapa.sim.generate:run", "sim_generate", "lapa.sim.generate:GenerateConfig"),
    "sim eval": Command("simulator: closed-loop success rates of a policy",
                        "lapa.eval.closed_loop:run", "sim_eval", "lapa.eval.closed_loop:SimEvalConfig"),
    "serve": Command("serve a policy over HTTP: POST /act (image + instruction -> action), GET /health, /info",
                     "lapa.serve.server:run", "serve", "lapa.serve.serve_config:ServeConfig"),
    "experiment": Command("the LAPA effect: scratch vs LAPA vs true-action pretraining, success vs N demos",
                          "lapa.experiment.runner:run", "lapa_experiment", "lapa.experiment.config:ExperimentConfig"),
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


def _group_usage(group: str) -> str:
    """`lapa sim --help`: the sub-commands of a command group."""
    subs = {n: c for n, c in COMMANDS.items() if n.startswith(group + " ")}
    width = max(len(n) for n in subs)
    lines = [f"usage: lapa {group} <command> [key=value ...] [--help]", "", f"{group} commands:"]
    lines += [f"  {n:<{width}}  {c.summary}" for n, c in subs.items()]
    return "\n".join([*lines, "", f"`lapa {group} <command> --help` explains one."])


def _examples(cmd: Command) -> list[str]:
    """The example command lines in the header comment of the command's YAML (`#   lapa ...`)."""
    from importlib.resources import files

    try:
        text = files("lapa.conf").joinpath(f"{cmd.config_name}.yaml").read_text()
    except OSError:
        return []
    found = [m.strip() for m in re.findall(r"^#\s{2,}(lapa .*?)\s*(?:#.*)?$", text, re.M)]
    return [" ".join(line.split()) for line in found]


def _key_lines(cmd: Command) -> list[str]:
    """One line per key: `key: default  # what it is` (defaults from the composed YAML, descriptions from
    the comments of the schema's dataclass fields)."""
    from omegaconf import DictConfig, OmegaConf

    from lapa.config import compose, field_docs

    docs = field_docs(_resolve(cmd.schema))
    cfg = compose(cmd.config_name)

    def walk(node: DictConfig, prefix: str):
        for key in node.keys():
            full, child = f"{prefix}{key}", node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
                yield from walk(child, full + ".")
            else:
                value = "???" if child._is_missing() else OmegaConf.to_container(
                    OmegaConf.create({"v": child._value()}), resolve=False)["v"]
                yield full, value

    def show(v: object) -> str:  # YAML spelling, on one line
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(show(x) for x in v) + "]"
        if v is None or isinstance(v, bool):
            return {None: "null", True: "true", False: "false"}[v]
        return '""' if v == "" else str(v)

    rows = [(f"{k}: {show(v)}", docs.get(k, "")) for k, v in walk(cfg, "")]
    width = min(48, max(len(r[0]) for r in rows))
    return [f"  {left:<{width}}  # {doc}" if doc else f"  {left}" for left, doc in rows]


def _command_help(name: str, cmd: Command) -> str:
    doc = inspect.getdoc(_resolve(cmd.target)) or ""
    positional = " ".join(p.upper() for p in cmd.positional)
    text = [f"usage: lapa {name} {positional + ' ' if positional else ''}[key=value ...]", "",
            cmd.summary, ""]
    if doc:
        text += [doc, ""]
    text += [f"Default config (lapa/conf/{cmd.config_name}.yaml; override any key with key=value, "
             "a preset with group=option):", "", *_key_lines(cmd)]
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
    if name is None and any(n.startswith(argv[0] + " ") for n in COMMANDS):  # `lapa sim [--help]`
        wants_help = len(argv) == 1 or argv[1] in {"-h", "--help", "help"}
        print(_group_usage(argv[0]), file=sys.stdout if wants_help else sys.stderr)
        return 0 if wants_help else 2
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

    from lapa.config import ConfigError, check_inputs, compose, one_line, to_schema, to_yaml

    created: list[Path] = []
    try:
        try:
            cfg = to_schema(compose(cmd.config_name, overrides), _resolve(cmd.schema))
        except ConfigError as err:
            if str(err).startswith("missing value for "):
                example = _examples(cmd)[:1]
                raise ConfigError(f"{err}; e.g. {example[0]}" if example else str(err)) from None
            raise
        except Exception as err:  # Hydra's override grammar errors
            if type(err).__module__.startswith(("hydra", "omegaconf")):
                raise ConfigError(f"invalid override: {one_line(err)}") from None
            raise
        if print_cfg:
            print(to_yaml(cfg))
            return 0
        check_inputs(cfg)  # input paths, before anything is created
        created = _new_output_folders(cfg)
        _setup_logging()
        status = _resolve(cmd.target)(cfg)
    except ConfigError as err:  # every user error, whenever it is found: one line, status 2
        _remove_if_empty(created)
        message = " ".join(str(err).split())
        print(f"lapa {name}: {message}", file=sys.stderr)
        return 2
    return int(status or 0)


# Config keys that name a command's output folder: one created by a run that then fails on a user error
# (a ConfigError) is removed again when it is still empty.
OUTPUT_KEYS = ("output_dir", "output")


def _new_output_folders(cfg: object) -> list[Path]:
    return [Path(v) for k in OUTPUT_KEYS if isinstance(v := getattr(cfg, k, None), str) and v
            and not Path(v).exists()]


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        if folder.is_dir():
            for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir() and not any(sub.iterdir()):
                    sub.rmdir()
            if not any(folder.iterdir()):
                folder.rmdir()


def _setup_logging() -> None:
    """One handler on the root logger (a second `basicConfig` is a no-op, so lines never print twice)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


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
