"""Train one stage of MegActor-Σ, or several in order.

    python train.py --config configs/train/tiny/train_stage1.yaml [key=value ...]
    python train.py --config configs/train/tiny/train_stage{1,2,3}.yaml     # the stages in order, one process
    bash train.sh train.py configs/train/megactor-sigma/train_stage1.yaml 8   # accelerate, 8 GPUs
"""
import argparse
import gc
import logging
import sys

from megactor.config import ConfigError, TrainConfig, load_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, nargs="+",
                    help="a stage config (YAML); several run in the order given, in one process (the imports and the "
                         "decoded clips are shared, so a recipe of small stages starts once)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every stage, e.g. max_train_steps=100")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        paths = [a for a in args.config if "=" not in a]  # --config's list ends where the key=value words begin
        overrides = [a for a in args.config if "=" in a] + args.overrides
        configs = [load_config(TrainConfig, path, overrides) for path in paths]  # every typo before any training
        from megactor.training.trainer import Trainer

        frame_cache = None
        for path, cfg in zip(paths, configs):
            trainer = Trainer(cfg, where=path, frame_cache=frame_cache)
            folder = trainer.train()  # its data set is built here: shards without face data fail at once
            if trainer.accelerator.is_main_process:
                print(f"stage {cfg.stage} done: model saved to {folder}")
                if trainer.cut_short:
                    print("!" * 70 + f"\n{trainer.cut_short}\n" + "!" * 70)
            frame_cache = trainer.frame_cache
            del trainer  # the next stage builds its own model and optimizer
            gc.collect()
    except (ConfigError, OSError) as e:  # OSError: a file missing or unreadable (a corrupt checkpoint)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
