"""Why audio does not drive the mouth: is the information in the audio features, and does the gradient reach them?

    python bench/audio_probe.py --clips data/synthetic/heldout [--checkpoint runs/tiny/stage1/model]

1. Linear probe. For each synthetic clip, the frozen Whisper encoder of the model's config (the tiny
   preset's is random-initialised) gives every layer's features; each video frame's window of them
   (what SigmaDiT.audio_proj reads) is regressed onto the frame's true mouth opening with ridge
   regression, leaving one clip out at a time. The Pearson correlation of the held-out predictions with
   the truth says whether the features carry the envelope the mouth follows; the same probe on the
   frame's log-mel window and on its RMS loudness are the references.
2. Content against position. Whisper adds a fixed sinusoidal table to its stem's output, so features vary
   over time even in silence. Per layer, the standard deviation over time of (speech features - silence
   features) against that of the silence features: the share of the features that is the sound. The
   linear probe standardises every feature, so it reads the sound however small this share is; a network
   reading the raw features does not (transformers' std-0.02 init gave 0.025, and the tiny model's audio
   branch learned nothing; ``audio_encoder.init_stem`` fixes it).
3. Gradient. One audio-mode training loss (v-prediction, the clips' own frames) through the model at the
   checkpoint's weights (a stage-1 export is stage 2's start; a random model's zero-initialised final
   layer passes no gradient at all): the gradient norm of each audio parameter group against the
   backbone blocks'. A zero-initialised output projection passes no gradient to what lies before it, so
   at stage 2's first step only ``audio_attn.proj`` can learn.
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import os

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

from megactor.config import PRESETS, NoiseSchedulerConfig
from megactor.data.video_io import read_video
from megactor.diffusion.schedulers import training_scheduler, training_target
from megactor.models import SigmaDiT, WhisperAudioEncoder, build_codec, from_pretrained, gather_windows, window_indices
from megactor.models.audio_encoder import content_share, num_features


def clip_windows(encoder: WhisperAudioEncoder, audio: np.ndarray, num_frames: int, fps: float,
                 window: int) -> torch.Tensor:
    """(S,) 16 kHz audio -> (T, W, L+1, d): each video frame's window of every encoder layer's features."""
    features = encoder([audio])  # (1, n, L+1, d)
    idx = window_indices(torch.arange(num_frames)[None], fps, num_features(len(audio)), window)
    return gather_windows(features, idx)[0]


def frame_loudness(audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """(T, 1): the RMS of the audio over each frame's period."""
    bounds = (np.arange(num_frames + 1) / fps * 16000).astype(int)
    return np.array([[np.sqrt((audio[a:b] ** 2).mean()) if b > a else 0.0] for a, b in zip(bounds[:-1], bounds[1:])])


def probe(inputs: list[np.ndarray], targets: list[np.ndarray]) -> float:
    """Leave-one-clip-out ridge regression: Pearson correlation of all held-out predictions with the truth."""
    preds = []
    for k in range(len(inputs)):
        train_x = np.concatenate([x for i, x in enumerate(inputs) if i != k])
        train_y = np.concatenate([y for i, y in enumerate(targets) if i != k])
        mean, std = train_x.mean(0), train_x.std(0) + 1e-6
        model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit((train_x - mean) / std, train_y)
        preds.append(model.predict((inputs[k] - mean) / std))
    return float(np.corrcoef(np.concatenate(preds), np.concatenate(targets))[0, 1])


def gradient_norms(model: SigmaDiT, frames: np.ndarray, windows: torch.Tensor, frames_per_sample: int = 8) -> dict:
    """Gradient norm per parameter group of one audio-mode v-prediction loss on the clip's first frames."""
    codec = build_codec(model.config.codec)
    video = torch.from_numpy(frames[:frames_per_sample + 1]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    latents = codec.encode_video(video[:, :, 1:])  # (1, C, F, h, w)
    reference = codec.encode(video[:, :, 0])
    schedule = training_scheduler(NoiseSchedulerConfig(prediction_type="v_prediction", rescale_betas_zero_snr=True))
    torch.manual_seed(0)
    noise, t = torch.randn_like(latents), torch.randint(0, 1000, (1,))
    noisy = schedule.add_noise(latents, noise, t)
    target = training_target(schedule, latents, noise, t)
    model.zero_grad()
    pred = model(noisy, t, audio=windows[None, :frames_per_sample].float(), reference=reference)
    ((pred[:, :target.shape[1]] - target) ** 2).mean().backward()
    groups = {"audio_proj (MLP)": r"audio_proj.", "audio_attn q": r"audio_attn.q", "audio_attn kv": r"audio_attn.kv", "audio_attn.proj": r"audio_attn.proj",
              "backbone blocks": r"blocks."}
    out = {}
    for name, key in groups.items():
        grads = [p.grad for n, p in model.named_parameters() if key in n and p.grad is not None
                 and (name != "backbone blocks" or ("audio" not in n and "temporal" not in n))]
        out[name] = float(torch.sqrt(sum((g ** 2).sum() for g in grads))) if grads else 0.0
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", required=True, help="synthetic clips (clip_*.mp4 with their .json truth)")
    ap.add_argument("--checkpoint", default=None, help="the model whose audio encoder and start to use (default: tiny)")
    args = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(args.clips, "*.mp4")))
    if len(paths) < 3:
        raise SystemExit(f"{args.clips}: {len(paths)} clips; the leave-one-out probe needs at least 3")
    model = from_pretrained(args.checkpoint) if args.checkpoint else SigmaDiT(copy.deepcopy(PRESETS["tiny"]))
    encoder = WhisperAudioEncoder(model.config.audio_encoder)
    feats = {"whisper, all layers": [], "whisper, last layer": [], "whisper, input layer": [], "RMS loudness": []}
    targets, first = [], None
    for path in paths:
        clip = read_video(path)
        truth = np.asarray(json.load(open(path[:-4] + ".json"))["mouth_opening"], np.float64)
        windows = clip_windows(encoder, clip.audio, clip.num_frames, clip.fps, model.config.audio_window)  # (T, W, L+1, d)
        feats["whisper, all layers"].append(windows.flatten(1).numpy())
        feats["whisper, last layer"].append(windows[:, :, -1].flatten(1).numpy())
        feats["whisper, input layer"].append(windows[:, :, 0].flatten(1).numpy())
        feats["RMS loudness"].append(frame_loudness(clip.audio, clip.num_frames, clip.fps))
        targets.append(truth[:clip.num_frames])
        first = first or (clip.frames, windows)
    print(f"linear probe onto the true mouth opening, {len(paths)} clips, leave one clip out")
    print("| features | dims | held-out correlation |\n|---|---:|---:|")
    for name, xs in feats.items():
        print(f"| {name} | {xs[0].shape[1]} | {probe(xs, targets):.2f} |")
    shares = np.mean([content_share(encoder, read_video(p).audio).tolist() for p in paths], axis=0)
    print("\ncontent against position (std over time of speech - silence features, over silence's), per layer")
    print("| layer | " + " | ".join(str(i) for i in range(len(shares))) + " |\n|---|" + "---:|" * len(shares))
    print("| share | " + " | ".join(f"{v:.3f}" for v in shares) + " |")
    print(f"\ngradient norms of one audio-mode loss at {args.checkpoint or 'a random tiny model'}")
    print("| group | gradient norm |\n|---|---:|")
    for name, norm in gradient_norms(model, *first).items():
        print(f"| {name} | {norm:.3g} |")


if __name__ == "__main__":
    main()
