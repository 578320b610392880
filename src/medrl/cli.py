"""The ``medrl`` command: parses arguments, loads the config, calls one function. No logic here."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from medrl.errors import InputError, MedrlError

DEMO_CONFIG = "afids"
TASK_NAMES = (
    "landmark",
    "box",
    "plane",
    "slice",
    "rigid",
)  # medrl.tasks.TASKS, without importing torch for --help


def _configs_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("medrl") / "configs"))


def _config_path(value: str | None) -> Path | None:
    """A config file, or the name of a preset shipped with medrl (``afids``, ``smoke``)."""
    if value is None:
        return None
    path = Path(value)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    preset = _configs_dir() / f"{value}.yaml"
    if not preset.is_file():
        raise MedrlError(f"no config file or preset named {value!r}", value)
    return preset


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from medrl.data.builtin import fetch_afids

    if args.name == "spm12":
        from medrl.data.spm12 import fetch_spm12

        folder = fetch_spm12(args.folder, cache=args.cache)
        print(folder)
        return 0
    if args.name not in ("afids", "afids4"):
        raise MedrlError(f"unknown built-in data set {args.name!r} (known: afids, afids4, spm12)")
    folder = fetch_afids(cache=args.cache, wheel_dir=args.wheel_dir, verify=args.verify)
    if args.name == "afids4":  # both sources, then the skull-stripped copies, once
        from medrl.data.afids4 import afids4_datalist
        from medrl.data.spm12 import fetch_spm12

        fetch_spm12(args.folder, cache=args.cache)
        folder = afids4_datalist(cache=args.cache)[-1].image.parent
    print(folder)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medrl.config import load_config
    from medrl.workflows import train_model

    task = [f"task.kind={args.task}"] if args.task else []
    config = load_config(_config_path(args.config), [*task, *args.set])
    command = "medrl " + shlex.join(args.argv)
    model_dir = train_model(config, args.run_dir, args.restart, not args.quiet, command)
    if model_dir is not None:  # under torchrun only rank 0 speaks
        print(model_dir)
    return 0


def cmd_train_heatmap(args: argparse.Namespace) -> int:
    from medrl.config import load_config
    from medrl.supervised.training import DetectorTrainer, TrainSettings
    from medrl.utils.folder_lock import folder_lock

    if args.minutes <= 0 or (args.steps is not None and args.steps < 1):
        raise InputError("--minutes must be positive and --steps at least 1")
    config = load_config(_config_path(args.config), args.set)
    settings = TrainSettings(minutes=args.minutes, average_decay=args.average_decay)
    if args.steps is not None:
        settings = replace(settings, max_steps=args.steps)
    if args.cooldown_steps:
        if args.steps is None:
            raise InputError("--cooldown-steps needs --steps: the cool-down ends at the last step")
        settings = replace(settings, cooldown_steps=args.cooldown_steps)
    if config.train.threads > 0:
        import torch

        torch.set_num_threads(config.train.threads)
    with folder_lock(args.run_dir, "run folder", "medrl " + shlex.join(args.argv)):
        DetectorTrainer(config, args.run_dir, settings).run(progress=not args.quiet)
    print(f"{args.run_dir}/model")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medrl.agents.checkpoint import load_model, with_overrides
    from medrl.config import search_overrides
    from medrl.data.sources import load_split
    from medrl.evaluation import evaluate, print_tables
    from medrl.evaluation_boxes import evaluate_boxes, print_box_tables
    from medrl.evaluation_planes import evaluate_planes, print_plane_tables
    from medrl.evaluation_slices import evaluate_slices, print_slice_tables
    from medrl.predict import default_model_dir
    from medrl.utils.folder_lock import folder_lock

    if not 0.0 <= args.elastic_mm <= 10.0:
        raise InputError(f"--elastic-mm must be between 0 and 10 mm, not {args.elastic_mm}")
    if args.elastic_mm > 0 and args.rigid_trials < 1:
        raise InputError("--elastic-mm warps the moved scans: it needs --rigid-trials 1 or more")
    model_dir = args.model or default_model_dir(args.task or "landmark")
    model = load_model(model_dir, args.device, args.task)
    model = with_overrides(model, search_overrides(args.set))
    if model.kind == "rigid":
        raise InputError(
            "a rigid-registration model is evaluated on pairs by misalignment: "
            "python -m benchmarks.bench_rigid --model DIR (see BENCHMARKS.md)",
            model_dir,
        )
    datalist = args.datalist or model.config.train.datalist
    test_cases = load_split(datalist, args.split)
    # The affine baseline's atlas: the first 'train' case of --atlas, else of the datalist the
    # model was trained on (its template), so a datalist of test scans alone can be evaluated.
    atlas_source = args.atlas or model.config.train.datalist
    try:
        atlas = load_split(atlas_source, "train")[0]
    except InputError as exc:
        if args.atlas:
            raise
        raise InputError(
            f"cannot load the affine baseline's atlas from the model's training datalist "
            f"{atlas_source!r} ({exc}); pass --atlas DATALIST, a datalist whose first 'train' "
            "case is the atlas"
        ) from exc
    extra = {}
    if args.supervised:
        from medrl.supervised.detector import load_detector

        if model.kind != "landmark":
            raise InputError("--supervised compares a landmark detector: it needs a landmark model")
        extra["supervised"] = load_detector(args.supervised, args.device)
    runs = {"box": evaluate_boxes, "plane": evaluate_planes, "slice": evaluate_slices}
    printers = {"box": print_box_tables, "plane": print_plane_tables, "slice": print_slice_tables}
    run = runs.get(model.kind, evaluate)
    with folder_lock(args.out, "output folder", "medrl " + shlex.join(args.argv)):
        tables = run(
            model,
            test_cases,
            atlas,
            args.out,
            rigid_trials=args.rigid_trials,
            max_rotation_deg=args.max_rotation_deg,
            max_translation_mm=args.max_translation_mm,
            seed=args.seed,
            include_unmoved=args.include_unmoved,
            device=args.device,
            num_starts=args.starts,
            elastic_mm=args.elastic_mm,
            **extra,
        )
    printers.get(model.kind, print_tables)(tables)
    print(f"\ntables written to {args.out}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from medrl.predict import run_from_args

    return run_from_args(args)


def cmd_register(args: argparse.Namespace) -> int:
    from medrl.registration.base import RegisterOptions

    if args.seed < 0 or args.threads < 1:
        raise InputError("--seed must be >= 0 and --threads >= 1")
    options = RegisterOptions(
        seed=args.seed,
        model_dir=None if args.model is None else Path(args.model),
        landmark_model_dir=None if args.landmark_model is None else Path(args.landmark_model),
        landmark_mirror=args.landmark_mirror,
        device=args.device,
        threads=args.threads,
    )
    if args.datalist is not None:
        single = ("moving", "labels", "landmarks", "fixed_landmarks", "fixed_labels")
        given = [f"--{name.replace('_', '-')}" for name in single if getattr(args, name)]
        if given:
            raise InputError(f"{', '.join(given)}: give these in the datalist's columns")
        from medrl.registration.batch import register_datalist

        register_datalist(
            args.datalist, args.out, args.method, options, args.overwrite, not args.no_report
        )
        print(args.out)
        return 0
    if args.moving is None:
        raise InputError("--fixed needs --moving (the image to register to it)")
    from medrl.registration.workflow import register_pair

    record = register_pair(
        args.fixed,
        args.moving,
        args.out,
        args.method,
        options,
        labels=args.labels,
        landmarks=args.landmarks,
        fixed_landmarks=args.fixed_landmarks,
        fixed_labels=args.fixed_labels,
        report=not args.no_report,
    )
    tre = (record["metrics"].get("landmarks") or {}).get("tre_after_mm")
    extra = f", TRE {tre['mean']:.2f} mm" if tre else ""
    print(args.out)
    print(
        f"registered with {record['method']} in {record['seconds']:.1f} s{extra}; "
        f"outputs in {args.out}",
        file=sys.stderr,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from medrl.report import run_from_args

    return run_from_args(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Fetch the built-in data, train on MNI152NLin2009cAsym, evaluate on MNI152NLin6Asym."""
    run_dir = Path(args.run_dir)
    base = ["--run-dir", str(run_dir)]
    overrides = [item for value in args.set for item in ("--set", value)]
    steps = [
        ["data", "fetch", "afids"],
        ["train", "--config", args.config, *base, *overrides],
        ["evaluate", "--model", str(run_dir / "model"), "--out", str(run_dir / "evaluation")],
        ["report", str(run_dir)],
    ]
    for argv in steps:
        print(f"\n$ medrl {' '.join(argv)}", file=sys.stderr, flush=True)
        code = main(argv)
        if code:
            return code
    return 0


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--starts",
        type=int,
        choices=range(1, 8),
        metavar="1-7",
        help="search starts per landmark (default: the model's)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a search.* or task.* setting of the model, e.g. search.layout_weight=1",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="built-in data").add_subparsers(dest="action", required=True)
    fetch = data.add_parser("fetch", help="download and cache a built-in data set (sha256-checked)")
    fetch.add_argument("name", choices=["afids", "spm12", "afids4"])
    fetch.add_argument(
        "--folder",
        help="spm12, afids4: take the SPM12 files from this folder instead of downloading them",
    )
    fetch.add_argument("--cache", help="cache folder (default $MEDRL_CACHE or ~/.cache/medrl)")
    fetch.add_argument("--wheel-dir", help="folder with the pinned wheels already downloaded")
    fetch.add_argument("--verify", action="store_true", help="re-hash cached files")
    fetch.set_defaults(func=cmd_data_fetch)

    train = sub.add_parser("train", help="train an agent (resumes a killed run)")
    train.add_argument(
        "--config",
        help="YAML config file or preset name (afids, cit168-box, afids-planes, afids-slices, "
        "smoke)",
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.total_steps=5000",
    )
    train.add_argument("--run-dir", default="runs/train", help="checkpoints, logs, final model")
    train.add_argument("--task", choices=TASK_NAMES, help="the agent (default: the config's)")
    train.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    heatmap = sub.add_parser(
        "train-heatmap",
        help="train the supervised heatmap detector (the baseline beside the landmark agent)",
    )
    heatmap.add_argument("--config", help="landmark preset or YAML: its datalist and augmentation")
    heatmap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    heatmap.add_argument("--run-dir", default="runs/heatmap", help="checkpoint and final model")
    heatmap.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    heatmap.add_argument(
        "--steps", type=int, help="step budget (reproducible, unlike the clock); both: the first"
    )
    heatmap.add_argument(
        "--cooldown-steps",
        type=int,
        default=0,
        help="the learning rate falls linearly to 0 over the last N of --steps (default: constant)",
    )
    heatmap.add_argument(
        "--average-decay",
        type=float,
        default=0.0,
        help="write the moving average of the weights with this decay (e.g. 0.995) as the model",
    )
    heatmap.add_argument("--quiet", action="store_true", help="no progress lines")
    heatmap.set_defaults(func=cmd_train_heatmap)

    evaluate = sub.add_parser(
        "evaluate", help="agent against the affine baseline: errors in mm, box IoU"
    )
    evaluate.add_argument("--model", help="model folder (default: the shipped model)")
    evaluate.add_argument(
        "--task", choices=TASK_NAMES, help="expected task (default: the model's; shipped model)"
    )
    evaluate.add_argument("--datalist", help="datalist file or builtin:afids (default: model's)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument(
        "--atlas",
        metavar="DATALIST",
        help="datalist whose first 'train' case is the affine baseline's atlas "
        "(default: the model's training datalist)",
    )
    evaluate.add_argument("--out", default="runs/evaluation")
    evaluate.add_argument(
        "--rigid-trials",
        type=int,
        default=5,
        help="random rigid moves of each test scan (0: evaluate unmoved)",
    )
    evaluate.add_argument("--max-rotation-deg", type=float, default=15.0)
    evaluate.add_argument("--max-translation-mm", type=float, default=20.0)
    evaluate.add_argument(
        "--elastic-mm",
        type=float,
        default=0.0,
        help="also warp each moved scan by a smooth non-affine field of this amplitude (mm)",
    )
    evaluate.add_argument(
        "--supervised",
        metavar="DIR",
        help="also evaluate this supervised heatmap detector (medrl train-heatmap) beside the "
        "landmark agent and the affine baseline",
    )
    evaluate.add_argument("--include-unmoved", action="store_true")
    evaluate.add_argument("--seed", type=int, default=1000)
    _add_search_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser(
        "predict", help="find landmarks, boxes, planes or slices in scans (no labels needed)"
    )
    scans = predict.add_mutually_exclusive_group(required=True)
    scans.add_argument("--image", action="append", help="scan file or DICOM folder (repeatable)")
    scans.add_argument("--input-dir", help="folder searched recursively for scans")
    scans.add_argument("--datalist", help="datalist file (.json/.csv); labels are not needed")
    predict.add_argument("--out", required=True, help="output folder (one file per scan)")
    predict.add_argument("--overwrite", action="store_true", help="redo scans already done")
    predict.add_argument("--ray", action="store_true", help="spread the scans over a Ray cluster")
    predict.add_argument("--ray-address", help="Ray cluster address (default: start one here)")
    predict.add_argument("--ray-workers", type=int, help="model copies (default: one per CPU)")
    predict.add_argument("--model", help="model folder (default: the shipped model)")
    predict.add_argument(
        "--task",
        choices=TASK_NAMES,
        help="landmark (.fcsv), box (.mrk.json with ROIs), plane (.mrk.json with the MSP and "
        "AC-PC planes) or slice (.slices.json: the slice through each target); default: the "
        "model's",
    )
    predict.add_argument("--coordinate-system", choices=["RAS", "LPS"], default="RAS")
    predict.add_argument(
        "--write-aligned",
        action="store_true",
        help="plane models: also write each scan resampled into AC-PC space (AC at the origin, "
        "axes along the MSP and AC-PC planes) as NAME_acpc.nii.gz",
    )
    predict.add_argument(
        "--strict",
        action="store_true",
        help="landmark models: fail a scan whose landmarks do not have the model's layout (not "
        "a brain it knows: noise, another body part) instead of writing them with a warning",
    )
    predict.add_argument(
        "--slice-axis",
        type=int,
        choices=[0, 1, 2],
        help="slice models: the voxel axis (0, 1, 2 = i, j, k) to move through (default: the "
        "model's, normally the one closest to superior-inferior)",
    )
    _add_search_options(predict)
    predict.set_defaults(func=cmd_predict)

    register = sub.add_parser(
        "register",
        help="register a moving image to a fixed image (or a datalist of pairs): transform, "
        "moved image, labels and landmarks, metrics, report",
    )
    pairs = register.add_mutually_exclusive_group(required=True)
    pairs.add_argument("--fixed", help="the fixed (reference) image")
    pairs.add_argument(
        "--datalist",
        help="CSV/JSON of pairs: id,fixed,moving[,labels,landmarks,fixed_landmarks,fixed_labels]",
    )
    register.add_argument("--moving", help="the image moved onto the fixed image")
    register.add_argument(
        "--out", required=True, help="output folder (--datalist: one subfolder per pair)"
    )
    register.add_argument(
        "--method",
        default="affine",
        choices=("agent", "landmarks", "affine", "rigid", "bspline", "deformable"),
        help="agent: the rigid-registration agent (shipped model); landmarks: rigid, the "
        "agent's search then the robust fit of the landmarks a landmark model finds in both "
        "images (two different brains); affine, rigid, bspline: SimpleITK (Mattes MI); "
        "deformable: the learned SVF network (needs --model)",
    )
    register.add_argument("--model", help="model folder of the agent or deformable method")
    register.add_argument(
        "--landmark-model", help="--method landmarks: landmark model (default: the shipped one)"
    )
    register.add_argument(
        "--landmark-mirror", action="store_true",
        help="--method landmarks: the landmark searches also read the images' left-right "
        "mirror images (search.mirror; slower, a little more precise)",
    )  # fmt: skip
    register.add_argument("--labels", help="label map of the moving image (on its grid)")
    register.add_argument("--landmarks", help="landmarks of the moving image (.fcsv, ...)")
    register.add_argument("--fixed-landmarks", help="landmarks of the fixed image: TRE")
    register.add_argument("--fixed-labels", help="label map of the fixed image: Dice, HD95")
    register.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    register.add_argument("--device", default="cpu", help="learned methods: cpu, cuda, ...")
    register.add_argument(
        "--threads", type=int, default=2, help="threads (classical methods: 1 is reproducible)"
    )
    register.add_argument("--no-report", action="store_true", help="do not write report.html")
    register.add_argument(
        "--overwrite", action="store_true", help="--datalist: redo pairs already done"
    )
    register.set_defaults(func=cmd_register)

    report = sub.add_parser("report", help="HTML report of a run or evaluation folder")
    from medrl.report import add_arguments as add_report_arguments

    add_report_arguments(report)
    report.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="fetch data, train on built-in data, evaluate")
    demo.add_argument("--config", default=DEMO_CONFIG)
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument("--run-dir", default="runs/demo")
    demo.set_defaults(func=cmd_demo)

    from medrl.vlm.cli import add_vlm_parser  # parser only; the vlm extra is imported lazily

    add_vlm_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from medrl.utils.signals import StopRequested, Terminated, install_terminate_handler

    install_terminate_handler()  # SIGTERM stops like Ctrl-C (and training like both)
    try:
        return int(args.func(args))
    except MedrlError as exc:
        print(f"medrl: error: {exc}", file=sys.stderr)
        return 2
    except StopRequested as exc:
        print(f"medrl: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:
        name = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"medrl: {name}; finished outputs are kept, none is half-written", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
