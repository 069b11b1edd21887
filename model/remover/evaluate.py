"""How good is a watermark remover? Two measurements, each with its baselines in the same run.

- ``evaluate_pairs``: the synthetic test split (ground truth known): PSNR, SSIM and PSNR inside
  the watermark mask for the model, for the watermarked input itself, and for OpenCV inpainting
  (Telea) given the true mask.
- ``swcnn_protocol``: the test protocol of Tian et al., "A self-supervised CNN for image watermark
  removal" (TCSVT 2024), as its ``test.py`` does it: 27 photos × 12 logos per opacity α, the logo
  pasted at (128, 128) at 1.5× its size. Its input PSNRs reproduce the paper's to 4 decimals.

Pure torch/numpy/PIL/OpenCV: usable on a folder of images without a catalog.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.device import autocast, resolve_device
from model.metrics import psnr, ssim

SWCNN_ALPHAS = (0.3, 0.5, 0.7, 1.0)
# The paper's input-vs-clean PSNR (a check of the protocol) and its SWCNN results (Table, dB).
SWCNN_INPUT_PSNR = {"0.3": 28.9315, "0.5": 24.4613, "0.7": 21.542, "1.0": 18.4946}
SWCNN_PAPER_PSNR = {"0.3": 36.90, "0.5": 33.65, "0.7": 30.89, "1.0": 28.14}
SWCNN_PAPER_SSIM = {"0.3": 0.9893}
BASELINES = ("input", "inpaint", "oracle_restore", "mask_telea")


def alpha_key(alpha: float) -> str:
    """``0.3 -> "0.3"``, ``1 -> "1.0"``: the α keys of every JSON this project writes."""
    return f"{float(alpha):.1f}"


# --- running a model ----------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    x: torch.Tensor,
    harden_mask: bool = False,
    amp: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``model`` on a batch ``x`` (B,3,H,W) in [0, 1] of any size.

    The batch is padded (reflect) up to the network's ``size_multiple`` and the outputs cropped
    back. Returns ``image`` (clamped to [0, 1], float32) and, when the network has a mask head,
    ``mask`` (probabilities). With ``harden_mask`` the output is re-blended as
    ``x·(1−m) + y·m`` with a hard, one-pixel-dilated mask ``m = dilate(p > 0.5)`` so clean pixels
    are copied exactly (a soft mask bleeds onto them: cpu-training-lessons.md); the raw
    prediction ``y`` comes from the network's ``raw_image`` output when it has one.
    """
    model.eval()
    b, _, h, w = x.shape
    mult = int(getattr(model, "size_multiple", 1))
    ph, pw = (-h) % mult, (-w) % mult
    xp = x
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        xp = F.pad(x, (0, pw, 0, ph), mode=mode)
    precision = ("bf16" if x.device.type == "cpu" else "fp16") if amp else "fp32"
    residual: list[torch.Tensor] = []
    hook = None
    if harden_mask and getattr(model, "mask_guided", False) and hasattr(model, "head"):
        # A mask-guided UNet returns the soft blend; its raw prediction is input + head output.
        hook = model.head.register_forward_hook(lambda _m, _i, o: residual.append(o))
    try:
        with autocast(x.device, precision):
            out = model(xp)
    finally:
        if hook is not None:
            hook.remove()
    image = out["image"].float()[..., :h, :w]
    result: dict[str, torch.Tensor] = {}
    if residual:
        raw = x + residual[0].float()[..., :h, :w]
    elif "raw_image" in out:
        raw = out["raw_image"].float()[..., :h, :w]
    else:
        raw = image
    result["raw"] = raw.clamp(0, 1)
    if "mask_logits" in out:
        prob = torch.sigmoid(out["mask_logits"].float()[..., :h, :w])
        result["mask"] = prob
        if harden_mask:
            hard = dilate1(prob > 0.5)
            image = x * (1 - hard) + raw * hard
    result["image"] = image.clamp(0, 1)
    return result


def dilate1(mask: torch.Tensor) -> torch.Tensor:
    """A (B,1,H,W) boolean/0-1 mask grown by one pixel (3×3), as float."""
    return F.max_pool2d(mask.float(), kernel_size=3, stride=1, padding=1)


def oracle_restore(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor | None,
                   colour: torch.Tensor | None, raw: torch.Tensor) -> torch.Tensor:
    """Our restore given the true mark: a locate-then-restore model runs its restorer on the
    true mask, α and W; any other network's raw prediction is blended in through the true mask."""
    hard = dilate1(mask > 0.5)
    if hasattr(model, "restore") and alpha is not None and colour is not None:
        mult = int(getattr(model, "size_multiple", 1))
        h, w = x.shape[2:]
        ph, pw = (-h) % mult, (-w) % mult
        pad = (lambda t: F.pad(t, (0, pw, 0, ph), mode="replicate")) if ph or pw else (lambda t: t)
        with torch.no_grad():
            out = model.restore(pad(x), pad(mask.float() * 16 - 8), pad(alpha), pad(colour))
        raw = out["raw_image"].float()[..., :h, :w].clamp(0, 1)
    return x * (1 - hard) + raw * hard


def mask_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """IoU and F1 of a predicted boolean mask against the true one (both empty: 1.0)."""
    tp = float(np.count_nonzero(pred & true))
    fp = float(np.count_nonzero(pred & ~true))
    fn = float(np.count_nonzero(~pred & true))
    if tp + fp + fn == 0:
        return {"iou": 1.0, "f1": 1.0}
    return {"iou": tp / (tp + fp + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def to_tensor(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 arrays of one size -> (B,3,H,W) float32 in [0, 1]."""
    arr = np.stack(images).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) in [0, 1] -> (B,H,W,3) float32."""
    return t.detach().float().cpu().permute(0, 2, 3, 1).numpy()


# --- the synthetic test split -------------------------------------------------------------


def inpaint_telea(image: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """OpenCV Telea inpainting of ``mask`` (HxW bool) in ``image`` (HxWx3 uint8): the baseline
    that is told exactly where the watermark is."""
    return cv2.inpaint(image, mask.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)


def _as_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _scores(out: np.ndarray, clean: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    return {
        "psnr": float(psnr(out, clean)),
        "ssim": float(ssim(out, clean)),
        "masked_psnr": float(psnr(out, clean, mask=mask)) if mask.any() else float("nan"),
    }


def _candidates(out: np.ndarray, inp: np.ndarray, mask: np.ndarray, baselines: Sequence[str],
                oracle: np.ndarray | None, hard: np.ndarray | None) -> dict[str, np.ndarray]:
    """The images scored for one sample: the model's output ``out`` and each baseline's (float32
    HxWx3 in [0, 1]); ``mask`` is the true mask, ``hard`` the model's hardened one."""
    scored = {"model": out}
    if "input" in baselines:
        scored["input"] = inp
    if "inpaint" in baselines:
        scored["inpaint"] = inpaint_telea(_as_u8(inp), mask).astype(np.float32) / 255.0
    if oracle is not None:
        scored["oracle_restore"] = oracle
    if "mask_telea" in baselines:
        ours = hard if hard is not None else np.zeros_like(mask)
        scored["mask_telea"] = inpaint_telea(_as_u8(inp), ours).astype(np.float32) / 255.0
    return scored


def evaluate_pairs(
    model: torch.nn.Module,
    dataset: Iterable[dict],
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    harden_mask: bool = False,
    amp: bool = False,
    limit: int | None = None,
    baselines: Sequence[str] = ("input", "inpaint"),
) -> dict:
    """Score ``model`` on a fixed synthetic split (items as ``model.synth.pairs.WatermarkPairs`` gives:
    ``input``, ``clean``, ``mask`` tensors) against the input itself and Telea inpainting.

    Returns ``{"n": n, "model": {...}, "input": {...}, "inpaint": {...}, "seconds": s}``, each
    method with mean ``psnr``, ``ssim`` and ``masked_psnr`` (inside the true mask) vs ``clean``;
    ``baselines`` names the baselines scored (``("input",)`` for the cheap per-epoch validation):
    ``input``, ``inpaint`` (Telea given the true mask), and the two oracle runs that split the
    gap between the stages: ``oracle_restore`` (the true mask, α and W, then our restore; see
    ``oracle_restore``) and ``mask_telea`` (our hardened mask, then Telea). A mask network also
    gets ``mask``: mean IoU and F1 of its hardened mask against the true one.
    """
    device = resolve_device(device)
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: {', '.join(BASELINES)}")
    methods = ("model", *baselines)
    sums: dict[str, dict[str, list[float]]] = {m: {"psnr": [], "ssim": [], "masked_psnr": []} for m in methods}
    masks: dict[str, list[float]] = {"iou": [], "f1": []}
    t0 = time.perf_counter()
    batch: list[dict] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([it["input"] for it in batch]).to(device)
        res = predict(model, x, harden_mask=harden_mask, amp=amp)
        pred = to_numpy(res["image"])
        found = (res["mask"] > 0.5)[:, 0].cpu().numpy() if "mask" in res else None  # the predicted mask
        hard = dilate1(res["mask"] > 0.5)[:, 0].bool().cpu().numpy() if "mask" in res else None  # what is replaced
        oracle = None
        if "oracle_restore" in baselines:
            true = torch.stack([it["mask"] for it in batch]).to(device)
            a = torch.stack([it["alpha"] for it in batch]).to(device) if "alpha" in batch[0] else None
            c = torch.stack([it["colour"] for it in batch]).to(device) if "colour" in batch[0] else None
            oracle = to_numpy(oracle_restore(model, x, true, a, c, res["raw"]))
        for i, (it, out) in enumerate(zip(batch, pred, strict=True)):
            clean = it["clean"].permute(1, 2, 0).numpy().astype(np.float32)
            inp = it["input"].permute(1, 2, 0).numpy().astype(np.float32)
            mask = it["mask"][0].numpy() > 0.5
            scored = _candidates(out, inp, mask, baselines, None if oracle is None else oracle[i],
                                 None if hard is None else hard[i])
            if found is not None:
                for k, v in mask_scores(found[i], mask).items():
                    masks[k].append(v)
            for name, img in scored.items():
                for k, v in _scores(img, clean, mask).items():
                    sums[name][k].append(v)
        batch.clear()

    n = 0
    for item in dataset:
        if limit is not None and n >= limit:
            break
        batch.append(item)
        n += 1
        if len(batch) == batch_size:
            flush()
    flush()
    result: dict = {"n": n}
    for name, terms in sums.items():
        result[name] = {k: float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else None
                        for k, v in terms.items()}
    if masks["iou"]:
        result["mask"] = {k: float(np.mean(v)) for k, v in masks.items()}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


# --- the SWCNN protocol -------------------------------------------------------------------


def _numbered(folder: Path, suffix: str) -> list[Path]:
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() == suffix and p.stem.isdigit()]
    if not files:
        raise FileNotFoundError(f"no numbered *{suffix} files in {folder}")
    return sorted(files, key=lambda p: int(p.stem))


def swcnn_read_image(path: str | Path) -> np.ndarray:
    """The protocol's clean image: 8-bit, as OpenCV reads it (BGR), height and width cropped
    down to multiples of 32 from the top-left corner."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    h, w = img.shape[:2]
    return np.ascontiguousarray(img[: h // 32 * 32, : w // 32 * 32])


def swcnn_logo(path: str | Path, alpha: float) -> Image.Image:
    """Logo at opacity α: every pixel with non-zero alpha gets alpha ``int(255·α)``, then the
    logo is resized to 1.5× with Pillow's default filter."""
    logo = Image.open(path).convert("RGBA")
    r, g, b, a = logo.split()
    level = int(255 * alpha)
    a = a.point(lambda v: level if v > 0 else 0)
    logo = Image.merge("RGBA", (r, g, b, a))
    w, h = logo.size
    return logo.resize((int(1.5 * w), int(1.5 * h)))


def swcnn_watermark(clean: np.ndarray, logo: Image.Image, at: tuple[int, int] = (128, 128)) -> np.ndarray:
    """Alpha-composite ``logo`` (prepared by ``swcnn_logo``) onto ``clean`` (HxWx3 uint8) with its
    top-left corner at ``at``. The logo's RGB values land on the array unchanged, whatever its
    channel order (the paper's arrays are BGR)."""
    base = Image.fromarray(clean).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    layer.paste(logo, at)
    return np.asarray(Image.alpha_composite(base, layer))[:, :, :3].copy()


def swcnn_protocol(
    model: torch.nn.Module | None,
    images_dir: str | Path,
    logos_dir: str | Path,
    alphas: Sequence[float] = SWCNN_ALPHAS,
    device: str | torch.device = "cpu",
    harden_mask: bool = False,
    amp: bool = False,
    progress: Callable[[str], None] | None = None,
    score_ssim: bool = True,
) -> dict:
    """The SWCNN benchmark for ``model`` (``None``: the inputs only, to check the protocol).

    The model sees the photo in RGB order (the channel-reversed OpenCV array, so the logo's
    colours are swapped, which the metrics do not care about) and its output is reversed back;
    PSNR (data range 1) and SSIM (``model.metrics.ssim``, skimage's, channels last) are taken
    against the clean crop, averaged over images, then over logos.

    Returns ``{"protocol": "swcnn", "images": n, "logos": n, "alpha": {"0.3": {"input_psnr",
    "psnr", "input_ssim", "ssim"}, ...}, "seconds": s}`` (``psnr``/``ssim`` None without a model,
    the SSIMs None with ``score_ssim=False``: SSIM costs most of the protocol's time).
    """
    device = resolve_device(device)
    image_paths = _numbered(Path(images_dir), ".jpg")
    logo_paths = _numbered(Path(logos_dir), ".png")
    cleans = [swcnn_read_image(p) for p in image_paths]
    if model is not None:  # channels-last: ~25 % faster convolutions on the CPU, same numbers
        model = model.to(device=device, memory_format=torch.channels_last)
    t0 = time.perf_counter()
    out: dict = {"protocol": "swcnn", "images": len(cleans), "logos": len(logo_paths), "alpha": {}}
    for alpha in alphas:
        per_logo: dict[str, list[float]] = {"input_psnr": [], "psnr": [], "input_ssim": [], "ssim": []}
        for logo_path in logo_paths:
            logo = swcnn_logo(logo_path, alpha)
            acc: dict[str, list[float]] = {k: [] for k in per_logo}
            for clean_u8 in cleans:
                marked_u8 = swcnn_watermark(clean_u8, logo)
                clean = clean_u8.astype(np.float32) / 255.0
                marked = marked_u8.astype(np.float32) / 255.0
                acc["input_psnr"].append(psnr(marked, clean))
                if score_ssim:
                    acc["input_ssim"].append(ssim(marked, clean))
                if model is not None:
                    x = to_tensor([marked_u8[:, :, ::-1]], device).contiguous(memory_format=torch.channels_last)
                    y = to_numpy(predict(model, x, harden_mask=harden_mask, amp=amp)["image"])[0][:, :, ::-1]
                    acc["psnr"].append(psnr(y, clean))
                    if score_ssim:
                        acc["ssim"].append(ssim(y, clean))
            for k, v in acc.items():
                if v:
                    per_logo[k].append(float(np.mean(v)))
            if progress:
                progress(f"α={alpha} logo {logo_path.name}: input {per_logo['input_psnr'][-1]:.2f} dB"
                         + (f", model {per_logo['psnr'][-1]:.2f} dB" if per_logo["psnr"] else ""))
        out["alpha"][alpha_key(alpha)] = {k: (float(np.mean(v)) if v else None) for k, v in per_logo.items()}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
