"""SyncNet: the reference network's layout, its MFCCs, the lag convention, loading errors, a scored clip, and
the curation scoring with it when its weights are named."""
import numpy as np
import pandas as pd
import pytest
import torch

from megactor.curation.config import load_curation_config
from megactor.curation.pipeline import curate
from megactor.data.video_io import read_video, write_video
from megactor.metrics.syncnet import SyncNet, SyncNetScorer, mean_distances, syncnet_mfcc
from test_curation import small_clip


def test_mfcc_matches_python_speech_features():
    t = np.arange(800) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t)
    mfcc = syncnet_mfcc(tone)  # (13, F)
    # python_speech_features 0.6: mfcc(tone * 32768, 16000), frames 0 and 3
    expect = np.array([
        [22.2281, 1.3631, -18.1522, 14.2141, -25.6863, -69.1983, -15.5297, -0.1823, -34.1553, 8.2513, 41.6732, 0.6888, 0.0619],
        [22.0022, 5.0112, -15.5092, 20.116, -17.6677, -61.4881, -10.0415, 5.145, -28.0719, 11.2634, 41.8474, 1.5355, -0.2236]])
    assert mfcc.shape == (13, 4)
    np.testing.assert_allclose(mfcc[:, [0, 3]].T, expect, atol=2e-3)


def test_network_shapes_and_state_dict_names():
    net = SyncNet().eval()
    assert net.forward_lip(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)
    assert net.forward_aud(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
    names = net.state_dict()
    # a few names and shapes of the reference S model, which syncnet_v2.model is the state dict of
    assert names["netcnnaud.18.weight"].shape == (512, 256, 5, 4)
    assert names["netcnnlip.0.weight"].shape == (96, 3, 5, 7, 7)
    assert names["netcnnlip.18.weight"].shape == (512, 256, 1, 6, 6)
    assert names["netfclip.3.weight"].shape == (1024, 512) and len(names) == 102


@pytest.mark.parametrize("late", [-4, 0, 3])
def test_lag_is_positive_when_the_audio_is_late(late):
    lip = torch.randn(40, 16)
    aud = torch.roll(lip, late, 0)  # audio window i holds what video window i - late shows
    assert int(mean_distances(lip, aud, 15).argmin()) - 15 == late


def test_missing_or_foreign_weights_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.model"):
        SyncNetScorer(str(tmp_path / "nowhere.model"))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not SyncNet weights"):
        SyncNetScorer(str(tmp_path / "other.pt"))


def test_scores_a_clip_with_loaded_weights(testcases, tmp_path):
    torch.manual_seed(0)
    torch.save(SyncNet().state_dict(), tmp_path / "syncnet.model")
    scorer = SyncNetScorer(str(tmp_path / "syncnet.model"))
    clip = read_video(str(sorted((testcases / "driver").glob("*.mp4"))[0]), max_seconds=1.0)
    faces = clip.frames[:, 100:400, 100:400]  # (30, 300, 300, 3)
    result = scorer.score(faces, clip.audio, clip.fps, max_lag=5)
    assert result.correlations.shape == (11,) and -5 <= result.lag <= 5
    # confidence = median - minimum of the mean distances; correlations hold minus those distances
    assert result.score == pytest.approx(result.correlations.max() - np.median(result.correlations), rel=1e-5)
    assert result.correlations[result.lag + 5] == result.correlations.max()
    assert scorer.score(faces, clip.audio, clip.fps, max_lag=5).lag == result.lag  # deterministic


@pytest.mark.slow
def test_curation_scores_with_syncnet_when_its_weights_are_named(testcases, tmp_path):
    torch.manual_seed(0)
    torch.save(SyncNet().state_dict(), tmp_path / "syncnet.model")  # random weights, through the real loading path
    frames, audio, fps = small_clip(sorted((testcases / "driver").glob("*.mp4"))[0], 192, 1.5)
    write_video(str(tmp_path / "in" / "talk.mp4"), frames, fps, audio)
    settings = ["min_face_size=40", "min_clip_seconds=1", f"syncnet_weights={tmp_path / 'syncnet.model'}"]
    summary = curate(str(tmp_path / "in"), str(tmp_path / "out"), load_curation_config(settings))
    row = pd.read_csv(tmp_path / "out" / "metrics.csv").iloc[0]
    assert row["sync_scorer"] == "syncnet" and "syncnet (1 clips)" in summary
    assert np.isfinite(row["sync_score"]) and row["sync_lag_ms"] == 40 * row["sync_lag"]  # SyncNet's 25 fps frames
    assert {"sync_score", "sync_lag", "sync_lag_ms", "audio_rms", "has_audio"} <= set(row.index)
    # the same clip without the weights: the weight-free scorer, the same columns
    default = curate(str(tmp_path / "in"), str(tmp_path / "out2"), load_curation_config(settings[:2]))
    assert "lipsync (1 clips)" in default
