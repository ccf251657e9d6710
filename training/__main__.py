"""python -m training {train,context,export,retire,share,describe,bundle,split,join} ..."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pillow_kae import zoo
from pillow_kae.zoo.weights import DELTA_STEP


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train or resume a model run")
    train.add_argument("--data", nargs="+", required=True, help="image folders")
    train.add_argument(
        "--weights", type=float, nargs="+", help="sampling weight of each --data folder"
    )
    train.add_argument("--lmbda", type=float, required=True, help="rate-distortion trade-off")
    train.add_argument("--steps", type=int, help="total steps (not for the blog reproduction)")
    train.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    train.add_argument("--patch", type=int, default=192)
    train.add_argument("--batch", type=int, default=16)
    train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    train.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    train.add_argument("--init", default=None, help="weights .npz to warm-start from")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    train.add_argument("--steps-per-epoch", type=int, default=100)
    train.add_argument(
        "--arch",
        choices=["hyperprior", "channel-conditional", "seed-dense"],
        default="hyperprior",
        help="seed-dense with --lmbda 0 reproduces the blog's float autoencoder",
    )
    train.add_argument("--hidden", type=int, default=3456, help="seed-dense hidden width")
    train.add_argument("--epochs", type=int, default=2, help="seed-dense blog reproduction")
    train.add_argument("--channels", type=int, default=128)
    train.add_argument("--latent-channels", type=int, default=192)
    train.add_argument("--hyper-channels", type=int, default=128)
    train.add_argument(
        "--gain-steps",
        type=int,
        nargs=2,
        help="variable rate: train each crop at a random latent gain step in this range",
    )
    train.add_argument(
        "--gain-slope",
        type=float,
        default=2.0,
        help="variable rate: lambda multiplies by r^(slope * step), r = one gain step",
    )
    train.add_argument("--slices", type=int, default=6, help="channel-conditional: y slices")
    train.add_argument(
        "--slice-hidden", type=int, default=96, help="channel-conditional: slice transform width"
    )
    train.add_argument(
        "--checkerboard",
        action="store_true",
        help="channel-conditional: code each slice in two halves, the second conditioned on "
        "the first (its spatial transforms start at zero when the init has none)",
    )
    train.add_argument(
        "--train-only",
        nargs="+",
        metavar="PART",
        help="train these sub-models (e.g. g_s) and freeze the rest: a decoder fine-tune "
        "keeps the encoder and entropy model, so the bits of every file stay the same",
    )
    train.add_argument(
        "--precision",
        choices=["float32", "mixed_bfloat16"],
        default="float32",
        help="mixed_bfloat16: g_a's and g_s's inner convolutions compute in bfloat16 "
        "(float32 weights), about 1.4x the steps per second on a CPU with AVX-512 BF16",
    )
    train.add_argument(
        "--int8-kernels",
        action="store_true",
        help="compute with every conv kernel rounded as export stores it (int8 steps, a "
        "float16 scale per filter; straight-through): a fine-tune of int8 weights keeps what "
        "it learned when exported",
    )
    train.add_argument(
        "--devices",
        type=int,
        default=1,
        help="train data-parallel on N devices (JAX: keras.distribution; TF: MirroredStrategy)",
    )

    context = sub.add_parser(
        "context",
        help="train channel-conditional slice transforms on a shipped model's frozen transforms",
    )
    context.add_argument("--model", required=True, help="shipped model to build on")
    context.add_argument("--data", nargs="+", required=True, help="image folders")
    context.add_argument(
        "--limit", type=int, nargs="+", help="photos to take from each --data folder (default all)"
    )
    context.add_argument(
        "--out",
        required=True,
        help="run directory (continued where it stopped if it holds this run)",
    )
    context.add_argument("--slices", type=int, default=6)
    context.add_argument("--hidden", type=int, default=96, help="width of the slice transforms")
    context.add_argument("--steps", type=int, default=3000)
    context.add_argument(
        "--gain-steps", type=int, nargs=2, default=(-6, 2), help="range of latent gain steps"
    )
    context.add_argument("--lr", type=float, default=1e-3)
    context.add_argument("--kodak", default=None, help="photos to report progress on")
    context.add_argument("--seed", type=int, default=0)
    context.add_argument("--init", default=None, help="a context run's checkpoint to continue")
    context.add_argument(
        "--train-hyper",
        action="store_true",
        help="train h_s too (the whole entropy model of y; can move PSNR a little)",
    )
    context.add_argument(
        "--checkerboard",
        action="store_true",
        help="code each slice in two halves, the second conditioned on the first (spatial context)",
    )
    context.add_argument(
        "--freeze-slices",
        action="store_true",
        help="keep the slice transforms of --init (train what is added to them)",
    )

    export = sub.add_parser("export", help="export a run's weights and tables into pillow_kae")
    export.add_argument("run")
    export.add_argument("--name", required=True)
    export.add_argument("--kodak", default="../shared/data/kodak", help="evaluation images")
    export.add_argument("--max-images", type=int, default=None)
    export.add_argument("--data-note", default=None, help="describe the training data")
    export.add_argument(
        "--storage",
        choices=("float16", "int8"),
        default="int8",
        help="conv kernels as stored (int8: per-filter scales, half the bytes)",
    )
    export.add_argument(
        "--base",
        default=None,
        help="store int8 kernels as the difference from this installed model's (a fine-tune)",
    )
    export.add_argument(
        "--quality-steps",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="gain steps of quality 1 and 100 with model=NAME (a variable-rate model's range)",
    )
    export.add_argument(
        "--delta-step",
        type=int,
        default=DELTA_STEP,
        help="with --base: the unit of the stored kernel deltas, in the base's int8 steps "
        "(larger: fewer bytes, more rounding noise)",
    )

    retire = sub.add_parser(
        "retire", help="keep installed models' decoders for their files, then uninstall them"
    )
    retire.add_argument("names", nargs="+")

    share = sub.add_parser(
        "share",
        help="store retired decoders against the installed weights they share arrays with",
    )
    share.add_argument("names", nargs="+")

    describe = sub.add_parser(
        "describe", help="write the inference graph into installed model cards (weights untouched)"
    )
    describe.add_argument("names", nargs="+")

    bundle = sub.add_parser(
        "bundle", help="sample training photos into data_bundle/ for a lent GPU call"
    )
    bundle.add_argument(
        "--source",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "FOLDER", "COUNT"),
        help="COUNT random photos of FOLDER into OUT/NAME (repeat for each folder)",
    )
    bundle.add_argument("--out", default="data_bundle")
    bundle.add_argument("--seed", type=int, default=0)
    bundle.add_argument(
        "--wheels", action="store_true", help="also download Keras's wheels into .whl/"
    )

    for verb, text in (
        ("split", "cut a run's checkpoint into parts under the device tool's file limit"),
        ("join", "put a run's checkpoint back together from its parts"),
    ):
        sub.add_parser(verb, help=text).add_argument("run")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout
    )
    if args.command == "train" and args.arch == "seed-dense" and args.lmbda == 0:
        from training.seed import reproduce_blog

        reproduce_blog(
            args.data, args.out, epochs=args.epochs, hidden=args.hidden, workers=args.workers
        )
    elif args.command == "train":
        from training.train import TrainConfig, train

        if args.steps is None:
            parser.error("train needs --steps (except --arch seed-dense --lmbda 0)")
        if args.checkerboard and args.arch != "channel-conditional":
            parser.error("--checkerboard needs --arch channel-conditional")
        if args.arch == "seed-dense":
            kind, arch = "seed-dense", {"hidden": args.hidden}
        else:
            kind = "mean-scale-hyperprior"
            arch = {
                "channels": args.channels,
                "latent_channels": args.latent_channels,
                "hyper_channels": args.hyper_channels,
            }
            if args.arch == "channel-conditional":
                kind = "channel-conditional"
                arch.update(slices=args.slices, slice_hidden=args.slice_hidden)
                if args.checkerboard:
                    arch["checkerboard"] = True

        config = TrainConfig(
            data=args.data,
            weights=args.weights,
            lmbda=args.lmbda,
            steps=args.steps,
            out=args.out,
            patch=args.patch,
            batch=args.batch,
            lr=args.lr,
            minutes=args.minutes,
            init=args.init,
            seed=args.seed,
            workers=args.workers,
            steps_per_epoch=args.steps_per_epoch,
            kind=kind,
            arch=arch,
            devices=args.devices,
            gain_steps=tuple(args.gain_steps) if args.gain_steps else None,
            gain_slope=args.gain_slope,
            train_only=args.train_only,
            precision=args.precision,
            int8_kernels=args.int8_kernels,
        )
        train(config)
    elif args.command == "bundle":
        from training.bundle import bundle as make_bundle
        from training.bundle import wheels

        if not args.source and not args.wheels:
            parser.error("bundle needs --source NAME FOLDER COUNT (repeated), --wheels, or both")
        try:
            sources = [(name, Path(folder), int(count)) for name, folder, count in args.source]
        except ValueError:
            parser.error("--source takes NAME FOLDER COUNT, COUNT a whole number")
        if sources:
            make_bundle(sources, Path(args.out), args.seed)
        if args.wheels:
            wheels(Path(".whl"))
    elif args.command == "context":
        from training.context import ContextConfig, resumed, train_context

        limits = args.limit or [None] * len(args.data)
        if len(limits) != len(args.data):
            parser.error("--limit needs one count per --data folder")
        config = ContextConfig(
            model=args.model,
            data=args.data,
            limits=limits,
            out=args.out,
            slices=args.slices,
            hidden=args.hidden,
            steps=args.steps,
            gain_steps=tuple(args.gain_steps),
            lr=args.lr,
            kodak=args.kodak,
            seed=args.seed,
            init=args.init,
            train_hyper=args.train_hyper,
            checkerboard=args.checkerboard,
            freeze_slices=args.freeze_slices,
        )
        try:
            resumed(Path(config.out), config)  # before any work: a run is never overwritten
        except ValueError as err:
            parser.error(str(err))
        train_context(config)
    elif args.command in ("split", "join"):
        from training import parts

        getattr(parts, args.command)(Path(args.run))
    elif args.command == "retire":
        from training.export import retire

        for name in args.names:
            if retire(name, uninstall=True) is None:
                parser.error(f"{name} is not installed")
    elif args.command == "share":
        from training.export import share_retired

        for name in args.names:
            if name not in zoo.installed():
                parser.error(f"{name} is not installed")
            share_retired(name)
    elif args.command == "describe":
        from training.export import describe_installed

        for name in args.names:
            logging.getLogger("training").info("wrote %s", describe_installed(name))
    else:
        from training.export import export

        export(
            args.run,
            args.name,
            kodak=args.kodak,
            data_note=args.data_note,
            storage=args.storage,
            base=args.base,
            quality_steps=args.quality_steps,
            delta_step=args.delta_step,
            max_images=args.max_images,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
