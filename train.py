"""Train one stage of MegActor-Σ.

    python train.py --config configs/train/tiny/train_stage1.yaml [key=value ...]
    bash train.sh train.py configs/train/megactor-sigma/train_stage1.yaml 8   # accelerate, 8 GPUs
"""
import argparse
import logging
import sys

from megactor.config import ConfigError, TrainConfig, load_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a stage config (YAML)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_train_steps=100")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        from megactor.training.trainer import Trainer

        trainer = Trainer(cfg, where=args.config)
        folder = trainer.train()  # its data set is built here: shards without face data fail at once
    except (ConfigError, OSError) as e:  # OSError: a file missing or unreadable (a corrupt checkpoint)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if trainer.accelerator.is_main_process:
        print(f"stage {cfg.stage} done: model saved to {folder}")
        if trainer.cut_short:
            print("!" * 70 + f"\n{trainer.cut_short}\n" + "!" * 70)
    return 0


if __name__ == "__main__":
    sys.exit(main())
