"""The training commands: train-detector, pretrain-clip, calibrate."""

from __future__ import annotations

import click

from ..settings import (CAPTION_RULES, COPY_STRENGTHS, DETECTOR_ARCHS, INPUT_MODES, SAME_PICTURE_RULES, SCHEDULES,
                        TRAIN_STRENGTHS, DetectorTrainConfig as Train, PretrainConfig as Pretrain)
from . import options
from .base import Command, echo, example


@click.command("train-detector", cls=Command, epilog=example("overlap-audit train-detector /data/held-out/ --out my-detector"))
@click.argument("sources", nargs=-1, required=True)
@options.out_dir("Checkpoint directory.")
@click.option("--arch", type=click.Choice(DETECTOR_ARCHS), default=Train.arch, show_default=True)
@click.option("--dim", type=click.IntRange(min=2), default=Train.dim, show_default=True, help="Embedding dimension.")
@click.option("--input-size", type=click.IntRange(min=16), default=Train.input_size, show_default=True, help="Input pixels.")
@click.option("--batch-size", type=click.IntRange(min=2), default=Train.batch_size, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=Train.steps, show_default=True)
@click.option("--lr", type=float, default=Train.lr, show_default=True)
@click.option("--strength", type=click.Choice(TRAIN_STRENGTHS), default=Train.strength,
              show_default=True, help="Augmentation strength; mixed: drawn per copy.")
@options.seed
@click.option("--max-images", type=click.IntRange(min=2), default=Train.max_images, show_default=True,
              help="Images kept in memory as training thumbnails.")
@click.option("--input-mode", type=click.Choice(INPUT_MODES), default=Train.input_mode, show_default=True,
              help="luma (grey) or value (HSV V = max(R,G,B), unchanged by hue and saturation edits): one channel; "
                   "maxmin: max and min of R, G, B, two channels unchanged by hue rotation; value-or-min: the "
                   "value, or the min channel where the value is flat (saturated colours on white); each "
                   "standardised per image (brightness/contrast); maxchroma: max and chroma (max - min), each "
                   "channel standardised on its own, so a saturation change is undone too.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=Train.schedule, show_default=True,
              help="Learning-rate schedule.")
@click.option("--hard-negatives", type=click.IntRange(min=0), default=Train.hard_negatives, show_default=True,
              help="Group size: each batch is made of groups of this many look-alike images (an image and its "
                   "nearest neighbours under the network being trained), so each must be told from its "
                   "look-alikes; 0: random batches.")
@click.option("--mine-every", type=click.IntRange(min=1), default=Train.mine_every, show_default=True,
              help="With --hard-negatives: find the neighbours again every this many steps.")
@click.option("--global-weight", type=click.FloatRange(min=0), default=Train.global_weight, show_default=True,
              help="Add, with this weight, a loss that ranks every true pair above every pair of two different "
                   "images anywhere in the batch (the detector is used at one threshold for all queries); 0: "
                   "the paper's InfoNCE alone.")
@click.option("--same-picture", type=click.Choice(SAME_PICTURE_RULES), default=Train.same_picture, show_default=True,
              help="With --hard-negatives: how a neighbour is recognised as the same picture again (never used as "
                   "a negative): mean16, 16x16 inputs within 0.02 on average; z32, standardised 32x32 inputs "
                   "within 0.1 (contrast-free, so faint outlines and near-uniform skies are told apart).")
@click.option("--trim/--no-trim", "trim", default=Train.trim, show_default=True,
              help="Train on the views the audit embeds: the image and its augmented copy each cropped to its "
                   "content box (uniform or transparent margins left out).")
@click.option("--edit-p", type=click.FloatRange(0, 1), default=Train.edit_p, show_default=True,
              help="Chance that a training copy is first edited as republished clip art is: outline thickened "
                   "or thinned, recoloured, reshaded, given a drop shadow, or zoomed out on a canvas.")
@click.option("--init", "init", default=Train.init,
              help="Start from these clipdup weights (a training directory, a weights file, or 'clipdup' for "
                   "the shipped ones) instead of random ones: fine-tuning. Their architecture is used; one-channel "
                   "weights can start a --input-mode maxmin run (the min channel starts with zero weights), "
                   "maxmin weights a maxchroma run.")
@options.workers
@options.training_device
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@options.quiet
def train_detector(sources, out_dir, arch, dim, input_size, batch_size, steps, lr, strength, seed, max_images,
                   input_mode, schedule, hard_negatives, mine_every, global_weight, same_picture, trim, edit_p, init,
                   workers, device, resume, quiet) -> None:
    """Train the CLIP paper's near-duplicate detector on SOURCES (self-supervised: images vs augmented copies)."""
    from ..training.clipdup import train

    cfg = Train(arch=arch, dim=dim, input_size=input_size, batch_size=batch_size, steps=steps, lr=lr,
                      strength=strength, seed=seed, max_images=max_images, input_mode=input_mode, schedule=schedule,
                      hard_negatives=hard_negatives, mine_every=mine_every, global_weight=global_weight,
                      same_picture=same_picture, trim=trim, edit_p=edit_p, init=init)
    last = train(list(sources), out_dir, cfg, device=device, resume=resume, workers=workers, progress=options.progress(quiet))
    echo(f"trained to step {last.get('step')}: loss {last.get('loss', float('nan')):.4f}, proxy accuracy "
          f"{last.get('proxy_accuracy', float('nan')):.3f}; weights in {out_dir}/model.pt "
          f"(use --detector clipdup:{out_dir})")


@click.command("pretrain-clip", cls=Command, epilog=example("overlap-audit pretrain-clip /data/pairs/ --out my-clip --steps 2000"))
@click.argument("sources", nargs=-1, required=True)
@options.out_dir("Checkpoint directory.")
@click.option("--steps", type=click.IntRange(min=1), default=Pretrain.steps, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=Pretrain.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=Pretrain.lr, show_default=True,
              help="Peak learning rate (linear warm-up, cosine decay to a tenth).")
@click.option("--image-size", type=click.IntRange(min=16), default=64, show_default=True, help="Input pixels.")
@click.option("--caption-from", type=click.Choice(CAPTION_RULES), default=Pretrain.caption_from, show_default=True,
              help="caption: the source's caption (first line of NAME.txt); path: file name words, then its "
                   "folders; auto: caption where present, else path.")
@click.option("--max-items", type=click.IntRange(min=2), default=Pretrain.max_items, help="Use at most this many pairs.")
@options.seed
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@options.workers_option(1, "Decoding worker processes (0 = in this process).")
@options.training_device
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out (only --steps may change).")
@options.quiet
def pretrain_clip(sources, out_dir, steps, batch_size, lr, image_size, caption_from, max_items, seed, threads,
                  workers, device, resume, quiet) -> None:
    """Pretrain the project's small CLIP on the image–caption pairs of SOURCES (contrastive, learned temperature)."""
    from ..training.smallclip import pretrain
    from ..zeroshot.smallclip_net import SmallClipNetConfig

    cfg = Pretrain(steps=steps, batch_size=batch_size, lr=lr, seed=seed, caption_from=caption_from,
                      max_items=max_items)
    r = pretrain(list(sources), out_dir, cfg, SmallClipNetConfig(image_size=image_size), device=device, resume=resume,
                 threads=threads, workers=workers, progress=options.progress(quiet))
    echo(f"trained to step {r.step} on {r.n_pairs} image-caption pairs ({r.n_skipped} skipped) in "
          f"{r.seconds:.0f} s: loss {r.loss:.4f}, in-batch accuracy {r.accuracy:.3f}, temperature "
          f"{r.temperature:.4f}; weights in {out_dir}/model.pt")


@click.command(cls=Command, epilog=example("overlap-audit calibrate /data/held-out/ --detector phash --precision 0.99 "
                               "--out calibration.json"))
@click.argument("source")
@click.option("--detector", default="phash", show_default=True)
@click.option("--precision", "target", type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True)
@click.option("--strength", type=click.Choice(COPY_STRENGTHS), default="medium", show_default=True)
@click.option("--max-images", type=click.IntRange(min=3), default=2000, show_default=True)
@options.seed
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the calibration JSON.")
@options.workers
def calibrate(source, detector, target, strength, max_images, seed, out_file, workers) -> None:
    """Choose a detector threshold from your own held-out images (their augmented copies as positives)."""
    from ..calibrate import calibrate as run
    from ..atomic import atomic_write_json

    cal = run(source, detector, target_precision=target, strength=strength, seed=seed, max_images=max_images,
              workers=workers)
    echo(f"{cal.n_images} images ({cal.n_low_information} low-information left out), {strength} copies, "
          f"detector {cal.detector}")
    echo("| threshold | precision | recall |\n|---|---|---|")
    for row in cal.curve:
        echo(f"| {row['threshold']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} |")
    if cal.threshold is None:
        echo(f"no threshold reaches precision {target}")
    else:
        echo(f"threshold {cal.threshold:.4f}: precision {cal.precision:.4f}, recall {cal.recall:.4f} "
              f"(lowest threshold with precision >= {target})")
    if out_file:
        atomic_write_json(out_file, cal.to_dict())
