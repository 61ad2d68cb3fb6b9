"""Video IO: audio read and packed on the video's timeline when the streams start at different times;
frames written from a stream."""
from fractions import Fraction

import av
import numpy as np
import pytest

from megactor.curation.config import load_curation_config
from megactor.curation.pack import Pack
from megactor.curation.runner import Item
from megactor.data.shards import decode_audio
from megactor.data.video_io import iter_audio, read_audio, read_video, write_video

SR, FPS = 16000, 25


def offset_streams(path, video_start: float, audio_start: float, seconds: float = 2.5) -> None:
    """An mp4 whose video starts at ``video_start`` s and audio at ``audio_start`` s, with a click at 1.0 s
    (the files' common clock)."""
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        vs.time_base = Fraction(1, 12800)
        astream = c.add_stream("aac", rate=SR)
        astream.layout = "mono"
        for i in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 8 * (i % 30), np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(round((video_start + i / FPS) * 12800)), Fraction(1, 12800)
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
        signal = np.zeros(int(seconds * SR), np.float32)
        click = int(round((1.0 - audio_start) * SR))
        signal[click:click + 80] = 0.9
        for start in range(0, len(signal), 1024):
            frame = av.AudioFrame.from_ndarray(signal[None, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = SR, int(round(audio_start * SR)) + start, Fraction(1, SR)
            c.mux(astream.encode(frame))
        c.mux(astream.encode())


def click_at(audio: np.ndarray) -> int:
    return int(np.argmax(np.abs(audio) > 0.3))


# audio 0.436 s after the video (the file); audio 0.32 s before it (the video starts 8 frames late)
@pytest.mark.parametrize("video_start, audio_start", [(0.0, 0.436), (0.32, 0.0)])
def test_audio_is_read_and_packed_on_the_video_timeline(tmp_path, video_start, audio_start):
    path = tmp_path / "offset.mp4"
    offset_streams(path, video_start, audio_start)
    expected = int(round((1.0 - video_start) * SR))  # the click's sample on the video's timeline
    for audio in (read_audio(str(path)), read_video(str(path)).audio, np.concatenate(list(iter_audio(str(path))))):
        assert abs(click_at(audio) - expected) <= 16, (click_at(audio), expected)  # within 1 ms
    clips = Pack().process(Item("offset", ("offset.mp4", str(path))), load_curation_config(["min_clip_seconds=1"]),
                           str(tmp_path / "work"))
    packed = decode_audio(open(clips[0]["mp4"]["path"], "rb").read(), "packed")
    assert abs(click_at(packed) - expected) <= 16, (click_at(packed), expected)


def test_write_video_takes_a_stream_of_frames(tmp_path):
    frames = (np.full((33, 47, 3), 10 * i, np.uint8) for i in range(20))  # odd sizes, padded
    write_video(str(tmp_path / "a.mp4"), frames, 10.0, np.zeros(SR, np.float32))
    clip = read_video(str(tmp_path / "a.mp4"))
    assert clip.frames.shape == (20, 34, 48, 3) and abs(len(clip.audio) - 2 * SR) < 2048
    with pytest.raises(ValueError, match="frame 1"):
        write_video(str(tmp_path / "b.mp4"), iter([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]), 10.0)
