"""The ``gpoa`` command and what every command line shares: ``--config``, ``--data``, ``--set``, ``--device``.

    gpoa prompts | train | optimize | segment   the four stages (also Generate_initial_prompts.py,
                                                train_GPOA.py, test_GPOA.py and main_seg.py)
    gpoa teach --data DOMAIN --labelled K --out POLICY   one domain's labelled pairs → one policy file
    gpoa track --data CLIPS [--policy PATH]      follow the first frame's object through each clip
    gpoa convert NAME --src RAW --out DIR        a benchmark into GPOA's domain layout
    gpoa reproduce TABLE ... --root DATA         the papers' tables (also reproduce.py)
    gpoa demo-data --out data/demo               the demo families (also python -m gpoa.demo_data)
    gpoa corpus --out data/tasks --tasks 80      a corpus of generated tasks (python -m gpoa.task_data)
    gpoa serve --policy checkpoints/demo/best.pt a local web page (python -m gpoa.serve)

Exit codes: 0 every image done; 1 some images failed (the rest were processed, failures listed);
2 usage or config error (one line on stderr says what and how to fix it).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Callable, Optional

from gpoa.commandline import exit_code_of, whole_number
from gpoa.config import Config, load_config, resolve_device

EPILOG = """\
config:
  Settings come from the defaults, then --config FILE (YAML, e.g. configs/demo.yaml or
  configs/sam_dinov2.yaml), then each --set KEY=VALUE, e.g.
    --set segmenter.backend=sam --set segmenter.model_type=vit_h
    --set matching.mutual_nearest=true --set train.total_steps=5000
  Every field of gpoa/config.py can be set. The resolved config is saved beside the outputs.

exit codes:
  0 all images done, 1 some images failed (the others were processed), 2 usage/config error
"""


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=textwrap.fill(description, 100), epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--data", metavar="DIR", action="append",
                        help="a task: a dataset folder (reference_image/, reference_mask/, target_image/, ...), "
                             "a domain folder (image/ + mask/) or a folder of them; repeatable "
                             "(default: the config's 'data')")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config field (repeatable), e.g. --set features.backend=dinov2")
    parser.add_argument("--device", metavar="NAME", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, help="random seed (default: the config's 'seed')")
    parser.add_argument("--shard", metavar="I/N",
                        help="handle the I-th of N shares of the images (0-based; a Slurm array or several "
                             "processes by hand); under torchrun the share comes from RANK / WORLD_SIZE")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute outputs that exist instead of resuming an earlier run")
    return parser


def config_from_args(args: argparse.Namespace, extra_overrides: Sequence[str] = ()) -> Config:
    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.overwrite:
        overrides.append("overwrite=true")
    if args.shard:
        overrides.append(f"shard={args.shard}")
    cfg = load_config(args.config, overrides + list(extra_overrides))
    if args.data:
        cfg.data = list(args.data)  # paths as given: never split at commas
    return cfg


def run_stage(parser: argparse.ArgumentParser, stage: Callable, argv: Optional[Sequence[str]] = None,
              extra_overrides: Callable[[argparse.Namespace], list] = lambda args: []) -> int:
    """Parse ``argv``, build the config, run ``stage(cfg, device)`` and turn the outcome into an exit code.

    ``stage`` returns a :class:`~gpoa.runtime.StageReport` (or a tuple starting with one).
    """
    from gpoa.distributed import rank_device
    from gpoa.runtime import seed_everything

    args = parser.parse_args(argv)

    def work():
        cfg = config_from_args(args, extra_overrides(args))
        device = rank_device(resolve_device(cfg.device))  # under torchrun: cuda → cuda:<LOCAL_RANK>
        seed_everything(cfg.seed)
        return stage(cfg, device)

    return exit_code_of(parser.prog, work)


# ----- the commands -------------------------------------------------------------------------------
def prompts(argv: Optional[Sequence[str]] = None, prog: str = "gpoa prompts") -> int:
    """Stage 1 (:func:`gpoa.stages.initial_prompts.generate_initial_prompts`)."""
    from gpoa.stages.initial_prompts import generate_initial_prompts

    parser = stage_parser(prog, "Stage 1: match the reference pair(s) onto every target image and write initial "
                                "point prompts (initial_indices/<stem>.json, overlays/; patch features cached in "
                                "cache/).")
    parser.add_argument("--policy", metavar="PATH", help="a taught policy (gpoa teach): match against its references")
    return run_stage(parser, generate_initial_prompts, argv,
                     lambda args: [f"optimize.policy={args.policy}"] if args.policy else [])


def train(argv: Optional[Sequence[str]] = None, prog: str = "gpoa train") -> int:
    """Stage 2 (:func:`gpoa.stages.train.train_policy`)."""
    from gpoa.stages.train import train_policy

    parser = stage_parser(prog, "Stage 2: train ONE prompt-editing policy over every task given (Double DQN by "
                                "default; --set agent.learner=ppo|ppd). With env.reward=segmentation (default) it "
                                "learns from the training pairs, with env.reward=graph from the target prompt files "
                                "alone. Writes checkpoints/<run>/best.pt, last.pt, log.csv and the curves.")
    parser.add_argument("--run", metavar="NAME", help="run name: checkpoints/NAME/ (default: a time stamp)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last checkpoint of --run (or of the most recent run)")

    def overrides(args):
        return ([f"train.run={args.run}"] if args.run else []) + (["train.resume=true"] if args.resume else [])

    return run_stage(parser, train_policy, argv, overrides)


def optimize(argv: Optional[Sequence[str]] = None, prog: str = "gpoa optimize") -> int:
    """Stage 3 (:func:`gpoa.stages.optimize.optimize_prompts`)."""
    from gpoa.stages.optimize import optimize_prompts

    parser = stage_parser(prog, "Stage 3: optimise every initial prompt file with a trained policy (greedy, "
                                "deterministic): optimized_indices/ (+ traces/) and the random_subset, topk and "
                                "lookahead_rule baselines that stage 4 evaluates beside it.")
    parser.add_argument("--policy", metavar="PATH", help="policy checkpoint (default: most recent run's best.pt)")
    return run_stage(parser, optimize_prompts, argv,
                     lambda args: [f"optimize.policy={args.policy}"] if args.policy else [])


def segment(argv: Optional[Sequence[str]] = None, prog: str = "gpoa segment") -> int:
    """Stage 4 (:func:`gpoa.stages.segmentation.segment_and_evaluate`)."""
    from gpoa.stages.segmentation import segment_and_evaluate

    parser = stage_parser(prog, "Stage 4: segment every target with each prompt set found (initial, optimized, "
                                "every other <name>_indices/, each --prompts folder and, with target masks, the "
                                "'ideal' set) and evaluate: masks, overlays, metrics.csv, summary.csv, summary.md.")
    parser.add_argument("--prompts", metavar="DIR", action="append", default=[],
                        help="another folder of <stem>.json prompt files to evaluate (repeatable)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: DATASET/results)")

    def overrides(args):
        extra = [f"segmentation.prompts={','.join(args.prompts)}"] if args.prompts else []
        return extra + ([f"segmentation.out={args.out}"] if args.out else [])

    return run_stage(parser, segment_and_evaluate, argv, overrides)


def teach(argv: Optional[Sequence[str]] = None, prog: str = "gpoa teach") -> int:
    """Teach one domain (:func:`gpoa.teach.teach_domain`)."""
    from gpoa.teach import teach_domain

    parser = stage_parser(prog, "Teach GPOA one domain: its labelled pairs (a domain folder's first K + 1, a dataset "
                                "folder's reference and first K training pairs) choose the references, train an "
                                "agent and calibrate the gates, all kept in ONE policy file that gpoa prompts, "
                                "optimize and the predictor use with --policy.")
    parser.add_argument("--labelled", type=whole_number(1), metavar="K",
                        help="labelled pairs after the reference (default: every pair of the folder)")
    parser.add_argument("--out", required=True, metavar="POLICY", help="the policy file to write")
    parser.add_argument("--init", metavar="POLICY", help="start the agent from this policy (e.g. make demo's)")

    def overrides(args):
        return ([f"teach.out={args.out}"] + ([f"teach.labelled={args.labelled}"] if args.labelled else [])
                + ([f"teach.init={args.init}"] if args.init else []))

    return run_stage(parser, teach_domain, argv, overrides)


def track(argv: Optional[Sequence[str]] = None, prog: str = "gpoa track") -> int:
    """Clips (:func:`gpoa.stages.track.track_clips`)."""
    from gpoa.stages.track import track_clips

    parser = stage_parser(prog, "Follow the object of each clip's first-frame mask through the clip (--data: a "
                                "clip, image/ + mask/ with frames named in time order, or a folder of clips): every "
                                "frame's mask (OUT/<clip>/<frame>.png, DAVIS's layout), an overlay video with the "
                                "prompts (OUT/<clip>.mp4), per-frame rows (OUT/<clip>.csv) and, where frames have "
                                "masks, J and F per clip (OUT/track.csv, track.md).")
    parser.add_argument("--policy", metavar="PATH", help="policy checkpoint (e.g. checkpoints/demo/best.pt); "
                                                         "without it the initial prompts are segmented")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the workspace, outputs/)")
    args = parser.parse_known_args(argv)[0]
    return run_stage(parser, lambda cfg, device: track_clips(cfg, device, args.out, args.policy), argv)


def convert(argv: Optional[Sequence[str]] = None, prog: str = "gpoa convert") -> int:
    from gpoa.datasets.__main__ import main as convert_main

    return convert_main(argv, prog)


def reproduce(argv: Optional[Sequence[str]] = None, prog: str = "gpoa reproduce") -> int:
    from gpoa.experiments.reproduce import main as reproduce_main

    return reproduce_main(argv, prog)


def demo_data(argv: Optional[Sequence[str]] = None, prog: str = "gpoa demo-data") -> int:
    from gpoa.synth.demo import main as demo_main

    return demo_main(argv, prog)


def corpus(argv: Optional[Sequence[str]] = None, prog: str = "gpoa corpus") -> int:
    from gpoa.synth.corpus import main as corpus_main

    return corpus_main(argv, prog)


def serve(argv: Optional[Sequence[str]] = None, prog: str = "gpoa serve") -> int:
    from gpoa.serve.__main__ import main as serve_main

    return serve_main(argv, prog)


#: the subcommands of ``gpoa``: name → (command, one line of help)
COMMANDS = {
    "prompts": (prompts, "stage 1: initial point prompts for every target"),
    "train": (train, "stage 2: train one prompt-editing policy over every task given"),
    "optimize": (optimize, "stage 3: a trained policy edits every initial prompt file"),
    "segment": (segment, "stage 4: masks of every prompt set, and the metrics where masks exist"),
    "teach": (teach, "teach one domain from its labelled pairs: one policy file"),
    "track": (track, "follow the first frame's object through each clip"),
    "convert": (convert, "convert a benchmark's download into GPOA's domain layout"),
    "reproduce": (reproduce, "the papers' tables"),
    "demo-data": (demo_data, "write the two synthetic demo families"),
    "corpus": (corpus, "write a corpus of generated one-shot tasks to train a policy on"),
    "serve": (serve, "a local web page: a reference pair, many targets, their masks and prompts"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``gpoa COMMAND [options]``: run one of :data:`COMMANDS` (``gpoa COMMAND --help`` for its options)."""
    from gpoa import __version__

    argv = list(sys.argv[1:] if argv is None else argv)
    listing = "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items())
    usage = (f"usage: gpoa COMMAND [options]   (gpoa COMMAND --help for its options)\n\n"
             f"GPOA {__version__}: one-shot segmentation with point prompts that a trained agent edits.\n\n"
             f"commands:\n{listing}\n")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"gpoa {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"gpoa: error: unknown command '{argv[0]}'; choose one of {', '.join(COMMANDS)} (gpoa --help)",
              file=sys.stderr)
        return 2
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:], prog=f"gpoa {argv[0]}")
