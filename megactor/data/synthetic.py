"""Procedural talking heads: random faces that speak a synthetic, speech-like audio track.

Each clip draws an identity (face shape, skin, hair, eye and lip colours, background),
a speech-like track (syllables: formant-shaped harmonics of a gliding pitch under smooth
envelopes, grouped into phrases separated by pauses), a mouth whose inner opening follows
the audio envelope, eyes that narrow, widen and blink, and small smooth head motion. The faces are shaded and
detailed enough (sclera, iris, pupil, brows, nose, lips, teeth, hair) for MediaPipe's face
mesh to find them, so the curation pipeline and training can run end to end without real
data. A sidecar json holds the per-frame ground truth and the generator's parameters, and a
PNG the first frame: a source portrait in the tiny model's own domain.

    python -m megactor.data.synthetic --out data/synthetic --clips 64 --seconds 4 --size 128
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from megactor.data.video_io import AUDIO_RATE, write_video
from megactor.fileio import atomic_path

SUPERSAMPLE = 2  # shapes are drawn at this multiple of the output size, then area-averaged
SHIFT = 4  # cv2 drawing's fixed-point bits: coordinates carry 1/16 pixel
EYE_X, EYE_Y, EYE_W, EYE_H = 0.40, -0.12, 0.19, 0.075  # eye centre and half sizes, face units
MOUTH_Y, MOUTH_W, LIP = 0.70, 0.30, 0.065  # mouth centre height, half width, lip thickness
MAX_GAP = 0.32  # inner-mouth height when wide open, face units
JAW = 0.75  # share of the opening made by the jaw dropping
INTER_OCULAR = 2 * EYE_X

SKIN = np.array([(255, 224, 196), (241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 56, 38)])
HAIR = np.array([(25, 18, 14), (60, 40, 25), (110, 75, 40), (170, 120, 60), (215, 185, 125), (140, 55, 25),
                 (175, 175, 175)])
IRIS = np.array([(70, 110, 160), (60, 120, 80), (100, 70, 40), (50, 35, 25), (120, 130, 140)])
VOWELS = {  # formants F1, F2, F3 (Hz) and how far the jaw opens (and so how loud the vowel is)
    "a": ((730, 1090, 2440), 1.0), "e": ((530, 1840, 2480), 0.75), "i": ((270, 2290, 3010), 0.5),
    "o": ((570, 840, 2410), 0.85), "u": ((300, 870, 2240), 0.55)}


@dataclass
class Identity:
    """What makes one synthetic person look and sound like themself."""
    face_w: float  # half width of the face oval, face units (half height is 1.3)
    skin: tuple
    hair: tuple
    hair_long: bool
    iris: tuple
    lips: tuple
    shirt: tuple
    background: tuple  # top and bottom colours of the backdrop
    light: tuple  # direction of the key light in the image plane
    f0: float  # voice pitch, Hz
    texture_seed: int  # seeds the fine noise on skin and hair


def _lerp(a, b, t):
    return np.asarray(a, np.float64) * (1 - t) + np.asarray(b, np.float64) * t


def _colour(palette: np.ndarray, rng: np.random.Generator, jitter: float = 12) -> tuple:
    i = rng.uniform(0, len(palette) - 1)
    c = _lerp(palette[int(i)], palette[min(int(i) + 1, len(palette) - 1)], i % 1) + rng.normal(0, jitter, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def sample_identity(rng: np.random.Generator) -> Identity:
    skin = _colour(SKIN, rng, 8)
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(30, 150), rng.integers(70, 230)] for _ in range(2)]])
    angle = rng.uniform(0, 2 * np.pi)
    return Identity(
        face_w=float(rng.uniform(0.88, 1.02)), skin=skin, hair=_colour(HAIR, rng),
        hair_long=bool(rng.random() < 0.5), iris=_colour(IRIS, rng),
        lips=tuple(int(v) for v in _lerp(skin, (180, 70, 85), rng.uniform(0.55, 0.75))),
        shirt=tuple(int(v) for v in rng.integers(20, 235, 3)),
        background=tuple(tuple(int(v) for v in c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]),
        light=(float(np.cos(angle)), float(np.sin(angle))), f0=float(rng.uniform(95, 240)),
        texture_seed=int(rng.integers(2 ** 31)))


# --------------------------------------------------------------------------- audio


def speech_audio(rng: np.random.Generator, seconds: float, f0: float,
                 sample_rate: int = AUDIO_RATE) -> tuple[np.ndarray, np.ndarray]:
    """A speech-like track: audio (S,) and its loudness envelope (S,) in [0, 1], which the jaw follows.

    Phrases of 2-7 syllables, pauses between them. A syllable is a short consonant-like
    noise burst, then a vowel: harmonics of a gliding pitch weighted by the vowel's formant
    resonances, normalised to unit RMS and shaped by a smooth envelope whose peak is the
    syllable's loudness; open vowels are louder, as in speech.
    """
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 0.9) * t + rng.uniform(0, 6.3)))  # (S,)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    audio, envelope = np.zeros(n), np.zeros(n)
    start = rng.uniform(0.05, 0.3)
    while start < seconds - 0.15:
        for _ in range(rng.integers(2, 8)):
            length = rng.uniform(0.12, 0.3)
            i0, i1 = int(start * sample_rate), min(int((start + length) * sample_rate), n)
            if i1 - i0 < 0.1 * sample_rate:
                break
            formants, openness = VOWELS["aeiou"[rng.integers(5)]]
            loud = rng.uniform(0.6, 1.0) * openness
            seg = np.linspace(0, 1, i1 - i0, endpoint=False)
            env = loud * np.sin(np.pi * seg) ** 1.5  # smooth rise and fall
            f_mid = pitch[(i0 + i1) // 2]
            harmonics = np.arange(1, int(4000 // f_mid) + 1)
            gain = sum(1 / (1 + ((harmonics * f_mid - f) / 90.0) ** 2) for f in formants) / harmonics ** 0.5
            vowel = (gain[:, None] * np.sin(harmonics[:, None] * phase[None, i0:i1])).sum(0)
            audio[i0:i1] += env * vowel / np.sqrt((vowel ** 2).mean())
            burst = min(int(0.03 * sample_rate), i1 - i0)
            audio[i0:i0 + burst] += 0.15 * loud * np.diff(rng.normal(size=burst + 1)) * np.hanning(burst)
            envelope[i0:i1] = env
            start += length + rng.uniform(0.0, 0.05)
        start += rng.uniform(0.25, 0.7)
    audio += 0.002 * rng.normal(size=n)
    return (0.8 / np.abs(audio).max() * audio).astype(np.float32), envelope.astype(np.float32)


# --------------------------------------------------------------------------- motion


def blinks(rng: np.random.Generator, num_frames: int, fps: float) -> np.ndarray:
    """(T,) eye openness in [0, 1]: a blink every 1.5-4.5 s, lasting 0.3 s (real blinks last 0.1-0.4 s): the lids
    close in 0.1 s, stay shut for 0.05 s and reopen in 0.15 s, so that at 25 fps a blink spans 7 frames and is
    shut in at least one."""
    open_ = np.ones(num_frames)
    t = np.arange(num_frames) / fps
    at = rng.uniform(0.3, 2.0)
    while at < t[-1]:
        shape = np.interp(t - at, [0.0, 0.1, 0.15, 0.3], [1.0, 0.0, 0.0, 1.0], left=1.0, right=1.0)
        open_ = np.minimum(open_, shape)
        at += rng.uniform(1.5, 4.5)
    return open_


def lid_aperture(rng: np.random.Generator, num_frames: int, fps: float) -> np.ndarray:
    """(T,) how wide the eyes are held between blinks, 1 at rest: slow swings between a squint (about 0.65)
    and wide eyes (about 1.2), as a talking face narrows and widens its eyes with what it says. Without it
    the lids move only in blinks, a few frames in a hundred, and eye following could hardly be measured."""
    t = np.arange(num_frames) / fps
    freq, phase = rng.uniform(0.15, 0.6, 2), rng.uniform(0, 2 * np.pi, 2)
    swing = (np.sin(2 * np.pi * freq[:, None] * t + phase[:, None]) * np.array([[0.6], [0.4]])).sum(0)  # [-1, 1]
    return np.where(swing < 0, 1 + 0.35 * swing, 1 + 0.2 * swing)


def head_motion(rng: np.random.Generator, num_frames: int, fps: float) -> np.ndarray:
    """(T, 3): smooth head offset x, y (fractions of the frame) and roll (degrees)."""
    t = np.arange(num_frames)[:, None] / fps
    freq = rng.uniform(0.1, 0.6, (3, 3))  # 3 sinusoids per channel
    amp = np.array([0.017, 0.01, 2.0])[:, None] * rng.uniform(0.3, 1.0, (3, 3))
    phase = rng.uniform(0, 2 * np.pi, (3, 3))
    return np.stack([(a * np.sin(2 * np.pi * f * t + p)).sum(1) for f, a, p in zip(freq, amp, phase)], 1)


# --------------------------------------------------------------------------- drawing


def _pts(xy: np.ndarray) -> np.ndarray:
    """Float pixel points -> cv2's fixed-point int32 (N, 2)."""
    return np.round(np.asarray(xy) * (1 << SHIFT)).astype(np.int32).reshape(-1, 2)


class HeadRenderer:
    """Draws one identity: a static backdrop and body, a pre-shaded head sprite, and per frame
    the eyes and mouth on the sprite, which is then moved and composited."""

    def __init__(self, identity: Identity, size: int):
        self.id, self.size = identity, size
        self.res = res = size * SUPERSAMPLE
        self.unit = 0.2 * res  # pixels per face unit: the face oval is 0.52 of the frame tall
        self.centre = np.array([res / 2, res * 0.46])
        self.backdrop = self._backdrop()
        self.sprite, self.alpha = self._head()
        self.eye_layer, self.eye_region = self._open_eyes()

    def px(self, x, y) -> np.ndarray:
        """Face units -> sprite pixels."""
        return self.centre + np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], -1) * self.unit

    def _ellipse(self, img, cx, cy, ax, ay, colour, angle=0.0, arc=(0, 360), thickness=-1):
        cv2.ellipse(img, tuple(_pts(self.px(cx, cy))[0]), tuple(_pts(np.array([ax, ay]) * self.unit)[0]),
                    angle, arc[0], arc[1], colour, thickness, cv2.LINE_AA, SHIFT)

    def _poly(self, img, x, y, colour):
        cv2.fillPoly(img, [_pts(self.px(x, y))], colour, cv2.LINE_AA, SHIFT)

    def _backdrop(self) -> np.ndarray:
        res, ident = self.res, self.id
        ramp = np.linspace(0, 1, res)[:, None, None]
        img = _lerp(ident.background[0], ident.background[1], ramp) * np.ones((1, res, 1))
        img = img.astype(np.uint8)
        neck = tuple(int(c * 0.8) for c in ident.skin)
        self._poly(img, [-0.42, 0.42, 0.48, -0.48], [0.6, 0.6, 2.0, 2.0], neck)
        self._ellipse(img, 0, 2.45, 2.1, 0.95, ident.shirt)
        if ident.hair_long:
            self._poly(img, [-1.15, 1.15, 1.3, -1.3], [-0.2, -0.2, 1.7, 1.7], ident.hair)
        return img

    def _head(self) -> tuple[np.ndarray, np.ndarray]:
        """The head at rest without eyes and mouth: RGB sprite and its alpha (float32, [0, 1])."""
        res, ident, w = self.res, self.id, self.id.face_w
        img = np.zeros((res, res, 3), np.uint8)
        alpha = np.zeros((res, res), np.uint8)
        hair = ident.hair
        for target, fill in ((img, None), (alpha, 255)):
            self._ellipse(target, 0, -0.38, w + 0.2, 1.1, fill or hair)  # hair behind the head
            for side in (-1, 1):  # ears
                ear = fill or tuple(int(c * 0.9) for c in ident.skin)
                self._ellipse(target, side * w * 0.98, 0.05, 0.16, 0.28, ear)
            self._ellipse(target, 0, 0, w, 1.3, fill or ident.skin)
        # shading: key light from one side, darker towards the rim of the oval
        yy, xx = np.mgrid[0:res, 0:res].astype(np.float32)
        u, v = (xx - self.centre[0]) / self.unit / w, (yy - self.centre[1]) / self.unit / 1.3
        r = np.sqrt(u ** 2 + v ** 2)
        lx, ly = ident.light
        shade = np.clip(1.0 - 0.35 * np.clip(r, 0, 1.2) ** 4 + 0.12 * (u * lx + v * ly), 0.45, 1.15)
        face = np.zeros((res, res), np.uint8)
        self._ellipse(face, 0, 0, w, 1.3, 255)
        blend = cv2.GaussianBlur(face, (0, 0), 0.04 * self.unit).astype(np.float32)[..., None] / 255
        img = (img * (1 - blend + blend * shade[..., None])).clip(0, 255).astype(np.uint8)
        self._features(img)
        hairline = np.zeros_like(img)
        hair_mask = np.zeros((res, res), np.uint8)
        for target, fill in ((hairline, hair), (hair_mask, 255)):  # fringe over the forehead
            self._ellipse(target, 0, -0.62, w + 0.06, 0.72, fill, arc=(180, 360))
            self._ellipse(target, 0, -0.62, w + 0.06, 0.12, fill, arc=(0, 180))
        img = np.where(hair_mask[..., None] > 127, hairline, img)
        noise = np.random.default_rng(ident.texture_seed).normal(0, 4, img.shape)  # skin and hair texture
        img = (img + cv2.GaussianBlur(noise, (0, 0), 1.0)).clip(0, 255).astype(np.uint8)
        return img, alpha.astype(np.float32) / 255

    def _features(self, img: np.ndarray) -> None:
        """Static features on the shaded face: brows, nose, cheeks."""
        ident, res = self.id, self.res
        soft = np.zeros((res, res, 3), np.float32)  # additive shading, blurred
        lx = ident.light[0]
        shadow_side = -1.0 if lx > 0 else 1.0  # the nose casts its shadow away from the light
        self._poly(soft, shadow_side * np.array([0.12, 0.02, 0.17]), [-0.05, 0.42, 0.42], (-45, -45, -45))
        for side in (-1, 1):
            self._ellipse(soft, side * 0.45, 0.35, 0.18, 0.1, (12, -6, -6))  # cheeks
        self._ellipse(soft, 0, 0.38, 0.13, 0.06, (-40, -40, -40))  # under the nose
        self._ellipse(soft, 0.03 * lx, 0.3, 0.05, 0.05, (30, 30, 30))  # tip highlight
        soft = cv2.GaussianBlur(soft, (0, 0), 0.04 * self.unit)
        img[:] = (img + soft).clip(0, 255).astype(np.uint8)
        dark = tuple(int(c * 0.45) for c in ident.skin)
        for side in (-1, 1):
            self._ellipse(img, side * 0.085, 0.4, 0.045, 0.025, dark, angle=side * 20)  # nostrils
            self._ellipse(img, side * 0.13, 0.36, 0.06, 0.07, tuple(int(c * 0.75) for c in ident.skin),
                          arc=(-80, 80) if side > 0 else (100, 260), thickness=2)  # the nose's wings
            x = side * np.array([0.2, 0.38, 0.58, 0.6, 0.38, 0.2])  # brow, a thick arch
            y = np.array([-0.33, -0.4, -0.34, -0.3, -0.35, -0.28])
            self._poly(img, x, y, ident.hair)

    def _open_eyes(self) -> tuple[np.ndarray, tuple[slice, slice]]:
        """Sclera, iris, pupil and catch light of both eyes, and the region they lie in."""
        layer = np.full((self.res, self.res, 3), 240, np.uint8)
        for side in (-1, 1):
            cx = side * EYE_X
            self._ellipse(layer, cx, EYE_Y, 0.085, 0.085, self.id.iris)
            self._ellipse(layer, cx, EYE_Y, 0.04, 0.04, (15, 10, 10))
            self._ellipse(layer, cx + 0.025, EYE_Y - 0.025, 0.014, 0.014, (250, 250, 250))
        corners = self.px([-EYE_X - EYE_W, EYE_X + EYE_W], [EYE_Y - EYE_H, EYE_Y + EYE_H])  # (2, 2)
        (x0, y0), (x1, y1) = corners.astype(int) + [[-2], [3]]
        return layer, (slice(y0, y1), slice(x0, x1))

    def _eyes(self, img: np.ndarray, openness: float) -> None:
        """Both eyes with the lids ``openness`` (0 shut, 1 open) apart: the open eyes seen through an almond."""
        h = EYE_H * max(openness, 0.03)
        mask = np.zeros(img.shape[:2], np.uint8)
        for side in (-1, 1):
            self._ellipse(mask, side * EYE_X, EYE_Y, EYE_W, h, 255)
        region = self.eye_region
        m = mask[region][..., None].astype(np.float32) / 255
        img[region] = (self.eye_layer[region] * m + img[region] * (1 - m)).astype(np.uint8)
        lash, crease = tuple(int(c * 0.35) for c in self.id.hair), tuple(int(c * 0.7) for c in self.id.skin)
        for side in (-1, 1):
            self._ellipse(img, side * EYE_X, EYE_Y, EYE_W, h, lash, arc=(180, 360), thickness=max(2, self.res // 160))
            self._ellipse(img, side * EYE_X, EYE_Y, EYE_W, h, crease, arc=(0, 180), thickness=1)

    def _mouth(self, img: np.ndarray, gap: float) -> None:
        """Lips around an inner mouth ``gap`` face units tall: dark cavity, upper teeth, tongue.

        The upper lip rises by a quarter of the gap; the lower lip drops with the jaw.
        """
        ident = self.id
        xs = np.linspace(-1, 1, 25)
        x = MOUTH_W * (1 - 0.2 * gap / MAX_GAP) * xs  # the mouth narrows a little as it opens
        curve = (1 - xs ** 2) ** 0.6
        top_inner = MOUTH_Y - (1 - JAW) * gap * curve - 0.004
        bottom_inner = MOUTH_Y + JAW * gap * curve + 0.004
        if gap > 0.01:
            self._poly(img, np.r_[x, x[::-1]], np.r_[top_inner, bottom_inner[::-1]], (40, 12, 18))
            teeth = np.minimum(top_inner + min(gap * 0.3, 0.045), bottom_inner)
            self._poly(img, np.r_[x * 0.75, x[::-1] * 0.75], np.r_[top_inner, teeth[::-1]], (230, 225, 215))
            self._ellipse(img, 0, MOUTH_Y + JAW * gap - 0.015, MOUTH_W * 0.45, min(gap * 0.25, 0.05), (150, 55, 65))
        upper = top_inner - LIP * (1.15 - 0.35 * np.exp(-(xs / 0.15) ** 2)) * (1 - xs ** 2) ** 0.5  # cupid's bow
        self._poly(img, np.r_[x, x[::-1]], np.r_[upper, top_inner[::-1]], ident.lips)
        lower = bottom_inner + 1.3 * LIP * (1 - xs ** 2) ** 0.5
        lower_colour = tuple(min(int(c * 1.1), 255) for c in ident.lips)
        self._poly(img, np.r_[x, x[::-1]], np.r_[bottom_inner, lower[::-1]], lower_colour)
        cv2.polylines(img, [_pts(self.px(x, (top_inner + bottom_inner) / 2 if gap <= 0.01 else top_inner))], False,
                      tuple(int(c * 0.45) for c in ident.lips), 1, cv2.LINE_AA, SHIFT)  # the line between the lips

    def render(self, mouth_gap: float, eye_open: float, dx: float, dy: float, roll: float) -> np.ndarray:
        """One (size, size, 3) uint8 frame; dx, dy in fractions of the frame, roll in degrees."""
        sprite, alpha = self.sprite.copy(), self.alpha.copy()
        drop = int(round(JAW * mouth_gap * self.unit))  # the chin moves down with the lower lip
        if drop:
            y = int(self.px(0, MOUTH_Y)[1])
            sprite[y + drop:], alpha[y + drop:] = self.sprite[y:self.res - drop], self.alpha[y:self.res - drop]
            sprite[y:y + drop], alpha[y:y + drop] = self.sprite[y], self.alpha[y]
        self._eyes(sprite, eye_open)
        self._mouth(sprite, mouth_gap)
        m = cv2.getRotationMatrix2D(tuple(self.centre), roll, 1.0)
        m[:, 2] += (dx * self.res, dy * self.res)
        moved = cv2.warpAffine(sprite, m, (self.res, self.res), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(alpha, m, (self.res, self.res), flags=cv2.INTER_LINEAR)
        frame = cv2.blendLinear(moved, self.backdrop, alpha, 1 - alpha)
        return cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- clips


def generate_clip(rng: np.random.Generator, seconds: float = 4.0, size: int = 128,
                  fps: float = 25.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """One talking head: frames (T, size, size, 3) uint8, audio (S,) float32 at 16 kHz, and truth.

    truth: per-frame ``mouth_opening`` (inner-lip gap / inter-ocular distance, as
    ``face.mouth_opening`` measures it), ``eye_opening`` (lid gap / eye width, as
    ``face.eye_opening``), ``head_x``/``head_y`` (offset in pixels) and ``head_roll``
    (degrees), plus ``fps``, ``sample_rate``, ``size`` and the ``identity``.
    """
    if seconds <= 0 or size < 32 or fps <= 0:
        raise ValueError(f"generate_clip: need seconds > 0, size >= 32, fps > 0; got {seconds}, {size}, {fps}")
    identity = sample_identity(rng)
    audio, envelope = speech_audio(rng, seconds, identity.f0)
    num_frames = int(round(seconds * fps))
    # the jaw follows the envelope, averaged over the frame period centred on each frame's time
    bounds = ((np.arange(num_frames + 1) - 0.5) / fps * AUDIO_RATE).astype(int).clip(0, len(envelope) - 1)
    gap = MAX_GAP * np.add.reduceat(envelope, bounds[:-1]) / np.maximum(np.diff(bounds), 1)  # (T,) face units
    eye_open = lid_aperture(rng, num_frames, fps) * blinks(rng, num_frames, fps)
    motion = head_motion(rng, num_frames, fps)  # (T, 3)
    renderer = HeadRenderer(identity, size)
    frames = np.stack([renderer.render(g, e, *m) for g, e, m in zip(gap, eye_open, motion)])
    truth = {
        "fps": fps, "sample_rate": AUDIO_RATE, "size": size, "num_frames": num_frames,
        "mouth_opening": np.round(gap / INTER_OCULAR, 4).tolist(),
        "eye_opening": np.round(eye_open * EYE_H / EYE_W, 4).tolist(),
        "head_x": np.round(motion[:, 0] * size, 3).tolist(),
        "head_y": np.round(motion[:, 1] * size, 3).tolist(),
        "head_roll": np.round(motion[:, 2], 3).tolist(),
        "identity": asdict(identity),
    }
    return frames, audio, truth


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".json", prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_clip(out_dir: Path, index: int, clip_seed: np.random.SeedSequence, seconds: float, size: int, fps: float,
               seed: int) -> Path:
    """Generate clip ``index`` and write it as ``clip_XXXX.mp4`` (H.264 + AAC) with its ``clip_XXXX.json`` truth
    and its first frame as ``clip_XXXX.png``."""
    frames, audio, truth = generate_clip(np.random.default_rng(clip_seed), seconds, size, fps)
    video = out_dir / f"clip_{index:04d}.mp4"
    write_video(str(video), frames, fps, audio, sample_rate=AUDIO_RATE)
    with atomic_path(str(video.with_suffix(".png"))) as tmp:
        Image.fromarray(frames[0]).save(tmp, format="PNG")
    _write_json(video.with_suffix(".json"), {**truth, "seed": seed, "index": index, "seconds": seconds})
    return video


def generate_dataset(out: str, clips: int, seconds: float = 4.0, size: int = 128, fps: float = 25.0,
                     seed: int = 0, workers: int = 1) -> list[Path]:
    """Write ``clips`` clips into ``out`` (``write_clip``), over ``workers`` processes.

    Clip i depends only on (seed, i), so a larger dataset extends a smaller one, whatever the workers.
    """
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, i, s, seconds, size, fps, seed) for i, s in enumerate(np.random.SeedSequence(seed).spawn(clips))]
    progress = dict(total=clips, desc="synthetic clips", unit="clip")
    if workers <= 1:
        return [write_clip(*job) for job in tqdm(jobs, **progress)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(tqdm(pool.imap(_write_clip_job, jobs), **progress))


def _write_clip_job(job: tuple) -> Path:
    return write_clip(*job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes drawing clips in parallel")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.seconds <= 0 or args.size < 32 or args.fps <= 0:
        parser.error(f"need --clips >= 1, --seconds > 0, --size >= 32, --fps > 0; got {args.clips}, "
                     f"{args.seconds}, {args.size}, {args.fps}")
    generate_dataset(args.out, args.clips, args.seconds, args.size, args.fps, args.seed, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
