"""The U-Net: size, shapes, the mask head and guided blend, channels-last / bf16, checkpoints."""

from __future__ import annotations

import io

import pytest
import torch

from model.remover.network import UNet, build_model, count_parameters, load_checkpoint, save_checkpoint


def _randomise_heads(model: UNet, seed: int = 0) -> UNet:
    """The image head starts at zero (identity network); give it weights so outputs differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_default_width_has_about_3_6m_trainable_parameters():
    n = count_parameters(UNet())
    print(f"UNet(base=32, depth=4): {n:,} trainable parameters")
    assert n == 3_541_728
    assert 3.4e6 < n < 3.8e6
    # the mask head adds one 1×1 conv from the last decoder level
    assert count_parameters(UNet(mask_head=True)) == n + 32 + 1


def test_blocks_are_the_seeds():
    net = UNet(base=8, depth=3)
    kinds = [type(m).__name__ for m in net.encoders[0].block]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "LeakyReLU"]
    assert len(net.gates) == len(net.encoders) == len(net.decoders) == 3  # a gate on every skip
    assert all(isinstance(u, torch.nn.ConvTranspose2d) for u in net.ups)
    assert net.size_multiple == 8


def test_untrained_network_returns_its_input_and_shapes_follow_input():
    torch.manual_seed(0)
    net = UNet(base=8, depth=3).eval()
    x = torch.rand(2, 3, 32, 48)
    out = net(x)
    assert set(out) == {"image"}
    assert out["image"].shape == x.shape
    assert torch.equal(out["image"], x)  # zero-initialised residual head
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.rand(1, 3, 36, 32))


def test_mask_head_and_mask_guided_blend():
    torch.manual_seed(0)
    plain = _randomise_heads(UNet(base=8, depth=2, mask_head=True)).eval()
    guided = UNet(base=8, depth=2, mask_guided=True).eval()
    guided.load_state_dict(plain.state_dict())
    assert guided.config["mask_head"] and guided.mask_guided
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a, b = plain(x), guided(x)
    assert a["mask_logits"].shape == (2, 1, 16, 16)
    assert torch.allclose(a["mask_logits"], b["mask_logits"])
    m = torch.sigmoid(a["mask_logits"])
    assert torch.allclose(b["image"], x * (1 - m) + a["image"] * m, atol=1e-6)
    assert not torch.allclose(b["image"], a["image"])


def test_channels_last_and_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    net = _randomise_heads(UNet(base=8, depth=3, mask_head=True)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)["image"]
        net_cl = net.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        cl = net_cl(x_cl)["image"]
        assert torch.allclose(cl, ref, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net_cl(x_cl)
    assert torch.allclose(out["image"].float(), ref, atol=5e-2)
    # and it trains that way: gradients reach the first layer
    net_cl.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net_cl(x_cl)
    (out["image"].float().mean() + out["mask_logits"].float().mean()).backward()
    g = net_cl.encoders[0].block[0].weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda():
    net = _randomise_heads(UNet(base=8, depth=3, mask_guided=True)).cuda().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(x)
        loss = out["image"].float().mean() + out["mask_logits"].float().mean()
    scaler.scale(loss).backward()
    assert torch.isfinite(net.encoders[0].block[0].weight.grad).all()


def test_a_few_steps_fit_a_batch():
    torch.manual_seed(0)
    net = UNet(base=8, depth=2).train()
    x = torch.rand(4, 3, 16, 16)
    y = (x * 0.5 + 0.2).clamp(0, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (net(x)["image"] - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip_from_path_and_bytes(tmp_path):
    torch.manual_seed(0)
    net = _randomise_heads(UNet(base=8, depth=2, mask_guided=True))
    net.train()
    net(torch.rand(2, 3, 16, 16))  # move BatchNorm running stats off their defaults
    net.eval()
    path = save_checkpoint(net, tmp_path / "ck" / "last.pt", epoch=3, history=[{"psnr": 30.5}])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    x = torch.rand(1, 3, 32, 32)
    for src in (path, path.read_bytes()):
        loaded, extra = load_checkpoint(src)
        assert extra == {"epoch": 3, "history": [{"psnr": 30.5}]}
        assert loaded.config == net.config and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x)["image"], net(x)["image"])
    assert build_model(net.config).config == net.config


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    net = UNet(base=4, depth=1)
    path = save_checkpoint(net, tmp_path / "last.pt", epoch=1)
    before = path.read_bytes()

    def dies_half_way(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(net, path, epoch=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)[1] == {"epoch": 1}


def test_load_rejects_what_is_not_a_checkpoint(tmp_path):
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buf)
    with pytest.raises(ValueError, match="not an Unmark UNet checkpoint"):
        load_checkpoint(buf.getvalue())
