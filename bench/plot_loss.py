"""Plot a run's training loss from its TensorBoard events.

    python bench/plot_loss.py RUN_DIR OUT.png
"""
from __future__ import annotations

import argparse
import glob

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("out")
    args = ap.parse_args()
    events = sorted(glob.glob(f"{args.run_dir}/**/events.out.tfevents.*", recursive=True))
    if not events:
        raise SystemExit(f"{args.run_dir}: no TensorBoard events")
    acc = EventAccumulator(events[-1])
    acc.Reload()
    fig, ax = plt.subplots(figsize=(7, 4))
    for tag in [t for t in acc.Tags()["scalars"] if t.startswith("loss")]:
        points = acc.Scalars(tag)
        ax.plot([p.step for p in points], [p.value for p in points], label=tag)
    sps = acc.Scalars("samples_per_s") if "samples_per_s" in acc.Tags()["scalars"] else []
    if sps:
        ax.set_title(f"{args.run_dir}: {sorted(p.value for p in sps)[len(sps) // 2]:.1f} samples/s (median)")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    first, last = acc.Scalars("loss")[0], acc.Scalars("loss")[-1]
    print(f"loss {first.value:.4f} at step {first.step} -> {last.value:.4f} at step {last.step}; wrote {args.out}")


if __name__ == "__main__":
    main()
