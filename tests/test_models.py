"""SigmaDiT: PixArt equivalence, the new branches, reference caching, temporal mixing, IO round trips."""
import copy
from pathlib import Path

import pytest
import numpy as np
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from megactor.models import (
    PixelCodec, SigmaDiT, WhisperAudioEncoder, build_codec, build_sigma_dit, from_pretrained, gather_windows,
    save_pretrained, window_indices,
)
from megactor.config import NoiseSchedulerConfig
from megactor.models.loading import WEIGHTS_NAME, load_noise_schedule

B, F = 2, 4  # batch, frames
TINY = tiny_config()
C, H, D = TINY.in_channels, TINY.sample_size, TINY.width  # the tiny preset's latent channels, size and width


def inputs(cfg, frames=F):
    latents = torch.randn(B, cfg.in_channels, frames, H, H)
    t = torch.tensor([10, 700])
    control = torch.randn_like(latents)
    audio = torch.randn(B, frames, 10, cfg.audio_encoder.layers + 1, cfg.audio_encoder.d_model)
    reference = torch.randn(B, cfg.in_channels, H, H)
    return latents, t, control, audio, reference


@pytest.fixture
def loaded(tiny_pixart_dir):
    cfg = tiny_config(transformer_path=tiny_pixart_dir, reference_patch_size=None)  # PixArt's own patches
    model = build_sigma_dit(cfg).eval()
    with torch.no_grad():
        model.context.normal_()
    return model


def test_pixart_loaded_reproduces_pixart_on_one_frame(tiny_pixart_dir, loaded):
    from diffusers import PixArtTransformer2DModel

    pixart = PixArtTransformer2DModel.from_pretrained(tiny_pixart_dir).eval()
    x, t = torch.randn(3, C, H, H), torch.tensor([0, 400, 999])
    with torch.no_grad():
        expected = pixart(x, encoder_hidden_states=loaded.context[None].expand(3, -1, -1), timestep=t).sample
        out = loaded(x[:, :, None], t)[:, :, 0]
    assert out.shape == (3, C, H, H)
    assert (out - expected[:, :C]).abs().max() <= 1e-5


def test_reference_net_starts_as_a_copy_of_the_backbone(loaded):
    sd = loaded.state_dict()
    assert torch.equal(sd["reference_net.blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    last = f"blocks.{TINY.depth - 1}"
    assert torch.equal(sd["reference_net.last_kv.kv.weight"], sd[f"{last}.attn.qkv.weight"][D:])
    assert torch.equal(sd["reference_net.last_kv.scale_shift_table"], sd[f"{last}.scale_shift_table"][:2])
    assert torch.equal(sd["reference_net.patch_embed.proj.weight"], sd["patch_embed.proj.weight"][:, :C])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_trainable_parameter_takes_part_in_its_stage(stage):
    """DistributedDataParallel (find_unused_parameters off) needs a gradient for every trainable parameter."""
    from megactor.config import TrainConfig, load_config
    from megactor.training.stages import select_trainable, uses_audio, uses_temporal

    model = SigmaDiT(tiny_config())
    for p in model.parameters():  # no zero-initialised layer blocking the gradient
        p.data.normal_(std=0.05)
    config = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny" / f"train_stage{stage}.yaml"
    groups = load_config(TrainConfig, str(config)).trainable_modules
    select_trainable(model, groups, stage)
    latents, t, control, audio, reference = inputs(model.config, frames=1 if stage == 1 else F)
    out = model(latents, t, control=control, audio=audio if uses_audio(stage) else None, reference=reference,
                temporal=uses_temporal(stage))
    out.square().mean().backward()
    idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not idle


def _perturb(module, std=0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=std)


@pytest.mark.parametrize("branch", ["visual", "audio", "temporal"])
def test_new_branch_has_no_effect_until_its_output_is_perturbed(loaded, branch):
    latents, t, control, audio, reference = inputs(loaded.config)
    with torch.no_grad():
        ref_kv = loaded.encode_reference(reference)
        base = loaded(latents, t, reference_kv=ref_kv, temporal=False)
        kwargs = {"visual": dict(control=control), "audio": dict(audio=audio), "temporal": dict(temporal=True)}[branch]
        assert torch.equal(loaded(latents, t, reference_kv=ref_kv, **kwargs), base)
        if branch == "visual":
            loaded.patch_embed.proj.weight[:, C:].normal_(std=0.5)
        else:
            for blk in loaded.blocks:
                _perturb(blk.audio_attn.proj if branch == "audio" else blk.temporal.attn.proj)
        assert (loaded(latents, t, reference_kv=ref_kv, **kwargs) - base).abs().max() > 1e-3


def test_amplitudes_scale_the_branches(loaded):
    latents, t, control, audio, reference = inputs(loaded.config)
    for blk in loaded.blocks:
        _perturb(blk.audio_attn.proj)
    loaded.patch_embed.proj.weight.data[:, C:].normal_(std=0.5)
    with torch.no_grad():
        off = loaded(latents, t)
        assert torch.allclose(loaded(latents, t, control=control, audio=audio, audio_amplitude=0.0,
                                     visual_amplitude=0.0), off, atol=1e-6)
        per_sample = loaded(latents, t, control=control, audio=audio, audio_amplitude=torch.tensor([0.0, 1.0]),
                            visual_amplitude=torch.tensor([0.0, 1.0]))
        full = loaded(latents, t, control=control, audio=audio)
    assert torch.allclose(per_sample[0], off[0], atol=1e-6)
    assert torch.allclose(per_sample[1], full[1], atol=1e-6)
    assert not torch.allclose(full[1], off[1], atol=1e-3)


@pytest.mark.parametrize("knob", ["audio_amplitude", "visual_amplitude"])
def test_an_amplitude_at_zero_switches_off_its_branch_alone(loaded, knob):
    latents, t, control, audio, reference = inputs(loaded.config)
    for blk in loaded.blocks:
        _perturb(blk.audio_attn.proj)
    loaded.patch_embed.proj.weight.data[:, C:].normal_(std=0.5)
    with torch.no_grad():
        off = loaded(latents, t, control=control, audio=audio, **{knob: 0.0})
        without = loaded(latents, t, control=None if knob == "visual_amplitude" else control,
                         audio=None if knob == "audio_amplitude" else audio)
        full = loaded(latents, t, control=control, audio=audio)
    assert torch.allclose(off, without, atol=1e-6)
    assert not torch.allclose(off, full, atol=1e-3)


def test_reference_changes_the_output_and_cached_kv_match_recomputation(loaded):
    latents, t, control, audio, reference = inputs(loaded.config)
    with torch.no_grad():
        ref_kv = loaded.encode_reference(reference)
        for step_t in (torch.tensor([999, 999]), torch.tensor([500, 20])):  # two "denoising steps"
            cached = loaded(latents, step_t, control=control, audio=audio, reference_kv=ref_kv)
            fresh = loaded(latents, step_t, control=control, audio=audio, reference=reference)
            assert torch.equal(cached, fresh)
        assert not torch.allclose(loaded(latents, t), loaded(latents, t, reference=reference), atol=1e-4)
        # one reference shared by a batch (the guidance branches) = that reference repeated
        shared = loaded(latents, t, reference_kv=loaded.encode_reference(reference[:1]))
        repeated = loaded(latents, t, reference=reference[:1].expand(B, -1, -1, -1))
    assert torch.allclose(shared, repeated, atol=1e-6)


def test_a_coarser_reference_patch_keeps_a_quarter_of_the_reference_tokens_on_the_denoisers_grid():
    cfg = tiny_config(reference_patch_size=2 * TINY.patch_size)
    model = SigmaDiT(cfg).eval()
    latents, t, control, audio, reference = inputs(cfg)
    with torch.no_grad():
        model.final_layer.proj.weight.normal_(std=0.02)  # zero at init: nothing would reach the output
        ref_kv = model.encode_reference(reference)
        tokens = (H // TINY.patch_size) ** 2
        assert [k.shape for k, _ in ref_kv] == [(B, tokens // 4, D)] * TINY.depth
        grid = H // TINY.patch_size
        fine = model.patch_embed.pos_embed[0].view(grid, grid, D)
        coarse = model.reference_net.patch_embed.pos_embed[0].view(grid // 2, grid // 2, D)
        assert torch.allclose(fine[::2, ::2], coarse, atol=1e-6)  # each coarse token where its patches start
        assert not torch.allclose(model(latents, t), model(latents, t, reference=reference), atol=1e-4)
        with pytest.raises(ValueError, match="another size"):
            model(latents, t, reference_kv=SigmaDiT(tiny_config(reference_patch_size=None)).encode_reference(reference))


def test_cached_context_keys_values_give_the_recomputed_output(loaded):
    latents, t, control, audio, reference = inputs(loaded.config)
    with torch.no_grad():
        context_kv = loaded.encode_context()
        ref_kv = loaded.encode_reference(reference)
        cached = loaded(latents, t, control=control, audio=audio, reference_kv=ref_kv, context_kv=context_kv)
        fresh = loaded(latents, t, control=control, audio=audio, reference_kv=ref_kv)
        loaded.context.add_(1.0)  # the cache is the context's: another context, another output
        moved = loaded(latents, t, control=control, audio=audio, reference_kv=ref_kv)
    assert torch.equal(cached, fresh)
    assert not torch.allclose(moved, fresh, atol=1e-4)


def test_compiled_blocks_match_eager_at_every_batch_of_guidance_passes():
    """compile_blocks (inference): one graph shared by the blocks, one per input shape, eager's outputs."""
    model = SigmaDiT(tiny_config(depth=2)).eval()
    _perturb(model, std=0.05)
    eager = copy.deepcopy(model)
    model.compile_blocks()
    latents, t, control, audio, reference = inputs(model.config)
    with torch.no_grad():
        kv, ctx = eager.encode_reference(reference[:1]), eager.encode_context()
        for n in (2, 1):  # three guidance passes at some steps, one at others
            args = (latents[:n], t[:n])
            kw = dict(control=control[:n], audio=audio[:n], reference_kv=kv, context_kv=ctx)
            assert (model(*args, **kw) - eager(*args, **kw)).abs().max() < 1e-5


def test_temporal_layers_mix_frames_only_when_on(loaded):
    for blk in loaded.blocks:
        _perturb(blk.temporal.attn.proj)
    latents, t, _, _, _ = inputs(loaded.config)
    changed = latents.clone()
    changed[:, :, 3] += 1.0  # touch frame j=3 only
    with torch.no_grad():
        on = loaded(changed, t) - loaded(latents, t)
        off = loaded(changed, t, temporal=False) - loaded(latents, t, temporal=False)
    assert on[:, :, 0].abs().max() > 1e-4  # frame i=0 depends on frame 3
    assert off[:, :, :3].abs().max() == 0  # frames are independent
    assert off[:, :, 3].abs().max() > 1e-4


def test_gradient_checkpointing_gives_the_same_gradients(loaded):
    latents, t, control, audio, reference = inputs(loaded.config)
    for blk in loaded.blocks:
        _perturb(blk.temporal.attn.proj)
    grads = []
    for enabled in (False, True):
        loaded.zero_grad()
        loaded.set_gradient_checkpointing(enabled)
        loaded(latents, t, control=control, audio=audio, reference=reference).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in loaded.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_compiled_model_matches_eager():
    """compile_model: the forward pass, reference net included, as one graph; its outputs and gradients are eager's."""
    model = SigmaDiT(tiny_config(depth=2))
    _perturb(model, std=0.05)  # no zero-initialised branch left out of the comparison
    eager = copy.deepcopy(model)
    model.compile_model()  # on CPU: without CUDA graphs
    latents, t, control, audio, reference = inputs(model.config)
    outputs, grads = [], []
    for m in (eager, model):
        out = m(latents, t, control=control, audio=audio, reference=reference)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append({name: p.grad for name, p in m.named_parameters()})
    assert (outputs[1] - outputs[0]).abs().max() < 1e-5
    for name, want in grads[0].items():
        assert (grads[1][name] - want).norm() <= 1e-4 * want.norm() + 1e-12, name
    with torch.no_grad():  # inference: cached reference keys/values, no autograd
        kv = eager.encode_reference(reference)
        assert (model(latents, t, control=control, audio=audio, reference_kv=kv)
                - eager(latents, t, control=control, audio=audio, reference_kv=kv)).abs().max() < 1e-5


def test_wrong_shapes_raise_naming_both():
    model = SigmaDiT(tiny_config()).eval()
    latents, t, control, audio, reference = inputs(model.config)
    cases = [
        dict(control=control[:, :, :3]),
        dict(audio=audio[:, :3]),
        dict(reference=reference[..., :8, :8]),
        dict(reference_kv=model.encode_reference(reference[..., :8, :8])),
    ]
    for kwargs in cases:
        with pytest.raises(ValueError) as e:
            model(latents, t, **kwargs)
        shapes = [str(tuple(v.shape)) for v in kwargs.values() if torch.is_tensor(v)]
        assert str(tuple(latents.shape)) in str(e.value)
        assert all(s in str(e.value) for s in shapes)


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    model = SigmaDiT(tiny_config())
    for p in model.parameters():  # make every tensor non-trivial, zero-initialised ones too
        p.data.normal_()
    save_pretrained(model, tmp_path / "ckpt")
    loaded = from_pretrained(str(tmp_path / "ckpt"))
    assert loaded.config == model.config
    saved = load_file(tmp_path / "ckpt" / WEIGHTS_NAME)
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v) and torch.equal(loaded.state_dict()[k], v), k
    latents, t, control, audio, reference = inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model(latents, t, control, audio, reference), loaded(latents, t, control, audio, reference))



def test_the_noise_schedule_travels_with_the_checkpoint(tmp_path):
    model = SigmaDiT(tiny_config())
    schedule = NoiseSchedulerConfig(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    save_pretrained(model, tmp_path / "with", noise_schedule=schedule)
    assert load_noise_schedule(str(tmp_path / "with")) == schedule
    save_pretrained(model, tmp_path / "without")
    assert load_noise_schedule(str(tmp_path / "without")) is None

# ---------------------------------------------------------------------------- audio


def test_audio_window_indices_by_hand():
    # 25 fps: video frame j starts at feature 2j; window of frame i = frames i-2..i+2, 2 features each.
    idx = window_indices(torch.tensor([0, 5, 9]), 25.0, num_features=20)
    assert idx[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert idx[1].tolist() == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert idx[2].tolist() == [14, 15, 16, 17, 18, 19, 19, 19, 19, 19]  # clamped at the clip's end
    # 30 fps: frame j starts at feature floor(5j/3).
    idx = window_indices(torch.tensor([0, 1, 10, 29]), 30.0, num_features=50)
    assert idx[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 3, 4]  # starts -4, -2, 0, 1, 3
    assert idx[1].tolist() == [0, 0, 0, 1, 1, 2, 3, 4, 5, 6]  # starts -2, 0, 1, 3, 5
    assert idx[2].tolist() == [13, 14, 15, 16, 16, 17, 18, 19, 20, 21]  # starts 13, 15, 16, 18, 20
    assert idx[3].tolist() == [45, 46, 46, 47, 48, 49, 49, 49, 49, 49]  # starts 45, 46, 48, 50, 51
    # per-sample fps and lengths broadcast
    both = window_indices(torch.tensor([[0, 1, 10, 29], [0, 5, 9, 9]]), torch.tensor([30.0, 25.0]),
                          torch.tensor([50, 20]))
    assert both[0].tolist() == idx.tolist()
    assert both[1, 2].tolist() == [14, 15, 16, 17, 18, 19, 19, 19, 19, 19]


def test_gather_windows_picks_the_indexed_features():
    feats = torch.arange(2 * 6).float().view(2, 6, 1, 1).expand(2, 6, 3, 4)
    idx = torch.tensor([[[0, 5]], [[2, 2]]])
    out = gather_windows(feats, idx)
    assert out.shape == (2, 1, 2, 3, 4)
    assert out[0, 0, :, 0, 0].tolist() == [0, 5] and out[1, 0, :, 0, 0].tolist() == [8, 8]


def test_whisper_encoder_loads_from_a_folder_and_gives_every_layer(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from megactor.config import AudioEncoderConfig
    from megactor.models.audio_encoder import whisper_config

    config = whisper_config(AudioEncoderConfig(d_model=32, layers=3, heads=2))
    WhisperModel(config).save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor().save_pretrained(tmp_path / "whisper")
    assert WhisperConfig.from_pretrained(tmp_path / "whisper").encoder_layers == 3
    encoder = WhisperAudioEncoder(AudioEncoderConfig(path=str(tmp_path / "whisper")))
    assert not any(p.requires_grad for p in encoder.parameters())
    speech = torch.randn(2, 16000 * 2)  # 2 s -> 100 feature frames
    feats = encoder(speech)
    assert feats.shape == (2, 100, 4, 32)
    assert not torch.allclose(feats[0], feats[1])
    # longer than Whisper's 30-second window: encoded in chunks
    long = encoder([torch.randn(16000 * 31).numpy()])
    assert long.shape == (1, 1550, 4, 32)


def test_random_whisper_is_seeded():
    from megactor.config import AudioEncoderConfig

    a, b = WhisperAudioEncoder(AudioEncoderConfig(seed=3)), WhisperAudioEncoder(AudioEncoderConfig(seed=3))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_random_whisper_features_carry_the_audio_not_only_the_position_table():
    """The tiny preset's random Whisper must let the sound through: in every layer the features of speech differ
    from those of silence by a sizeable share of how much the position table varies them over time (with
    transformers' std-0.02 init the share was 0.025, and the tiny model's audio branch learned nothing)."""
    from megactor.config import AudioEncoderConfig
    from megactor.data.synthetic import speech_audio
    from megactor.models.audio_encoder import content_share

    speech, _ = speech_audio(np.random.default_rng(0), 2.0, 140.0)
    share = content_share(WhisperAudioEncoder(AudioEncoderConfig()), speech)  # (L+1,)
    assert share.min() > 0.3, share.tolist()


# ---------------------------------------------------------------------------- codecs


def test_pixel_codec_is_lossless():
    codec = PixelCodec(4)
    video = torch.rand(1, 3, 2, 64, 64) * 2 - 1
    latents = codec.encode_video(video)
    assert latents.shape == (1, 48, 2, 16, 16)
    assert torch.equal(codec.decode_video(latents), video)


def test_vae_codec_loads_a_folder_and_applies_its_scaling(tmp_path):
    from diffusers import AutoencoderKL

    from megactor.config import CodecConfig

    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    codec = build_codec(CodecConfig(type="vae", path=str(tmp_path / "vae")))
    assert (codec.channels, codec.factor) == (4, 2)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = codec.encode(images)
    assert latents.shape == (2, 4, 16, 16)
    raw = vae.encode(images).latent_dist.mode()
    assert torch.allclose(latents, raw * 0.5, atol=1e-6)
    assert codec.decode(latents).shape == (2, 3, 32, 32)
    control = -torch.ones(1, 3, 2, 32, 32)
    control[:, :, 1, 8:16, 8:24] = 0.5  # one face part in the second frame
    latents = codec.encode_control(control)
    assert latents[:, :, 0].abs().max() < 1e-5  # an empty control frame is zero
    assert latents[:, :, 1].abs().amax(dim=(0, 1))[4:8, 4:12].min() > 1e-3


def test_control_latents_are_zero_where_the_control_is_empty():
    codec = PixelCodec(2)
    control = -torch.ones(2, 3, 3, 16, 16)  # black: nothing to follow
    control[0, :, 1, 4:8, 4:8] = torch.linspace(-1, 1, 16).view(4, 4)
    latents = codec.encode_control(control)
    assert torch.equal(latents, codec.encode_video(control + 1))
    assert latents[1].abs().max() == 0 and latents[0, :, [0, 2]].abs().max() == 0
