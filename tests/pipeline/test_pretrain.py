"""pipeline/pretrain.py and pipeline/registry.py: training the shipped remover on a folder of
photos (no catalog), its fp16 export, manifest and card, starting a later run from the shipped
weights, and ``unmark init`` registering them as the promoted remover."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import update

from model.remover.network import load_checkpoint
from pipeline.pretrain import WEIGHTS_DIR, card_command, corpus_paths, pretrain_remover
from pipeline.registry import register_shipped
from storage import queries as q
from storage.models import Model


@pytest.fixture
def photos(tmp_path):
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    arrays = [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket(), *load_sample_images().images]
    for i, a in enumerate(arrays):
        im = Image.fromarray(np.asarray(a)).convert("RGB")
        im.thumbnail((112, 112))
        im.save(folder / ("sub" if i % 2 else ".") / f"{i}.png")
    Image.fromarray(np.asarray(sd.coffee())).save(folder / "000011.png")  # a listed real overlay
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_corpus_paths_recurse_and_skip_overlays_and_bad_folders(photos, tmp_path):
    paths = corpus_paths([photos])
    assert len(paths) == 6 and all(p.suffix == ".png" for p in paths)
    assert "000011" not in {p.stem for p in paths}
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        corpus_paths([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        corpus_paths([tmp_path / "empty"])


def test_the_card_records_the_command_without_machine_paths(tmp_path):
    root = WEIGHTS_DIR.resolve().parents[1]
    beside = root.parent / "shared" / "corpus" / "kodak24"
    inside = root / "model" / "weights"
    got = card_command("unmark pretrain remover", ["--images", str(beside), f"--out={inside}",
                                                   "--images", str(tmp_path / "mine"), "--minutes", "5"])
    elsewhere = "…/mine" if not tmp_path.resolve().is_relative_to(root.parent) else "../" + str(
        (tmp_path / "mine").resolve().relative_to(root.parent))
    assert got == ("unmark pretrain remover --images ../shared/corpus/kodak24 --out=model/weights "
                   f"--images {elsewhere} --minutes 5")
    assert card_command("unmark pretrain detector", []) == "unmark pretrain detector"


def test_shipped_weights_carry_their_run_figures_to_the_report(photos, tmp_path, settings, catalog, blobs):
    """The export copies the run's history and figures beside the weights; a catalog whose remover
    is the shipped one shows them in the report's model section, and only for those weights."""
    from pipeline import registry
    from pipeline.report.training import training_section

    torch.set_num_threads(1)
    out = tmp_path / "weights"
    pretrain_remover([photos], tmp_path / "run1", 0.5, out_dir=out, profile="tiny", log=None, icon_logos=0)
    shipped = out / "remover-run"
    assert (shipped / "weights.sha256").read_text().strip() == hashlib.sha256((out / "remover.pt").read_bytes()).hexdigest()
    figures = json.loads((shipped / "visuals" / "visuals.json").read_text())["figures"]
    assert figures and all((shipped / "visuals" / f["file"]).is_file() for f in figures)
    assert {f["sample"] for f in figures} <= {None, 0}  # the first sample's figures and the network's
    assert json.loads((shipped / "history.json").read_text())  # the curves
    version = registry.register_shipped(catalog, blobs, out)["version"]
    html = training_section(catalog, settings.runs_dir, version, tmp_path / "assets", out)
    assert "Figures on fixed test samples" in html and f"assets/curves-{version}.png" in html
    assert f"assets/lr-{version}.png" in html and (tmp_path / "assets" / f"lr-{version}.png").is_file()
    assert all(f"assets/visuals-{version}/{f['file']}" in html for f in figures)
    assert all((tmp_path / "assets" / f"visuals-{version}" / f["file"]).is_file() for f in figures)
    (shipped / "weights.sha256").write_text("0" * 64)  # figures of other weights: not shown
    html = training_section(catalog, settings.runs_dir, version, tmp_path / "assets2", out)
    assert "no training history recorded" in html and "no figures recorded" in html


def test_pretrain_exports_fp16_weights_manifest_and_card_then_continues_from_them(photos, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "weights"
    with pytest.raises(ValueError, match="minutes must be positive"):
        pretrain_remover([photos], tmp_path / "run0", 0, out_dir=out, profile="tiny", log=None, icon_logos=0)
    first = pretrain_remover([photos], tmp_path / "run1", 0.5, out_dir=out, profile="tiny", command="first",
                             log=None, icon_logos=8)
    assert first["steps"] == 4  # tiny: two epochs of two steps
    payload = torch.load(out / "remover.pt", weights_only=True)
    assert {t.dtype for t in payload["state_dict"].values() if t.is_floating_point()} == {torch.float16}
    model, extra = load_checkpoint(out / "remover.pt")  # loads as a float32 network
    assert next(model.parameters()).dtype == torch.float32 and json.loads(extra["train_config"])["profile"] == "tiny"

    rows = (out / "remover-manifest.tsv").read_text().splitlines()
    assert rows[0] == "sha256\tfolder\tfile\tsplit" and len(rows) == 7
    by_file = {r.split("\t")[2]: r.split("\t") for r in rows[1:]}
    assert by_file["1.png"][0] == hashlib.sha256((photos / "sub" / "1.png").read_bytes()).hexdigest()
    assert {r[3] for r in by_file.values()} == {"train", "val", "test"}
    card = (out / "remover.md").read_text()
    assert "`first`" in card and "| scratch | 4 |" in card and "research" in card
    assert "8 icons-1 logos a renderer (train identities; val/test: held-out identities)" in card

    # A fresh run (a later session: no resume state) starts from the shipped weights.
    with pytest.raises(ValueError, match="lr must be positive"):
        pretrain_remover([photos], tmp_path / "run2", 0.5, out_dir=out, profile="tiny", log=None, lr=-1e-4)
    second = pretrain_remover([photos], tmp_path / "run2", 0.5, out_dir=out, profile="tiny", command="second",
                              log=None, icon_logos=0, lr=2e-4)
    assert second["steps"] == 4
    assert json.loads(load_checkpoint(out / "remover.pt")[1]["train_config"])["lr"] == 2e-4  # the fine-tune's peak
    assert f"initialised from {out / 'remover.pt'}" in (tmp_path / "run2" / "changelog.md").read_text()
    card = (out / "remover.md").read_text()
    assert "`second`" in card and card.count("| 4 |") == 2  # both runs in the run log
    assert "icons-1" not in card.split("## Data")[1].split("## Training")[0]  # the latest run's bank


def test_a_new_network_warm_starts_from_the_shipped_unet_or_starts_from_scratch(photos, tmp_path):
    """A locate-then-restore run warm-starts its trunks from shipped U-Net weights of its width;
    shipped weights that cannot seed the run's network leave it at random weights, and both say
    so in the log and the run log (no silent mixing of architectures)."""
    out = tmp_path / "weights"
    pretrain_remover([photos], tmp_path / "run1", 0.5, out_dir=out, profile="tiny", log=None, icon_logos=0)
    said: list[str] = []
    pretrain_remover([photos], tmp_path / "run2", 0.3, out_dir=out, profile="tiny-locate", log=said.append,
                     icon_logos=0)
    assert any("warm-starts" in m for m in said)
    runs = [json.loads(line) for line in (out / "remover-runs.jsonl").read_text().splitlines()]
    assert runs[-1]["started_from"].endswith("remover.pt")
    model, _ = load_checkpoint(out / "remover.pt")
    assert model.config.get("arch") == "locate-restore"
    assert "locate-then-restore" in (out / "remover.md").read_text()
    said.clear()  # now a U-Net run on top of the shipped locate-then-restore weights
    pretrain_remover([photos], tmp_path / "run3", 0.3, out_dir=out, profile="tiny", log=said.append, icon_logos=0)
    assert any("another network" in m and "from scratch" in m for m in said)
    runs = [json.loads(line) for line in (out / "remover-runs.jsonl").read_text().splitlines()]
    assert runs[-1]["started_from"] == "scratch"


def test_register_shipped_promotes_once_and_refuses_a_damaged_file(photos, tmp_path, catalog, blobs):
    out = tmp_path / "weights"
    assert register_shipped(catalog, blobs, out) is None  # nothing ships: nothing registered
    pretrain_remover([photos], tmp_path / "run1", 0.5, out_dir=out, profile="tiny", log=None, icon_logos=0)
    got = register_shipped(catalog, blobs, out)
    assert got["version"].startswith("remover-shipped-")
    with catalog.session() as s:
        m = q.promoted_model(s, "remover")
        assert m.version == got["version"] and m.config["profile"] == "tiny" and "psnr" in m.metrics
        assert blobs.get(m.checkpoint_key) == (out / "remover.pt").read_bytes()
    assert register_shipped(catalog, blobs, out) is None  # already promoted: left alone

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "remover.pt").write_bytes(b"not a checkpoint")
    with catalog.write() as s:
        s.execute(update(Model).values(promoted=False))
    with pytest.raises(ValueError, match="not a loadable remover checkpoint"):
        register_shipped(catalog, blobs, bad)
    with catalog.session() as s:
        assert q.promoted_model(s, "remover") is None and len(q.list_models(s, "remover")) == 1
