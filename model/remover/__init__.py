"""The watermark remover: its networks, how it is trained, and how it cleans an image.

The stages, from a training config to a cleaned photo:

1. ``trainconfig``: ``TrainConfig`` and the named ``PROFILES``; the network a config builds and
   the numerics each device gets.
2. ``network`` (the U-Net, its checkpoints, ``build_model``) and ``locate`` (locate, then
   restore: a whole-image localiser, the inversion, a full-resolution restorer).
3. ``losses``: the composite removal loss and its VGG perceptual term.
4. ``train``: the training loop, its wall-clock ``schedule`` (``model.schedule``) and run folder
   (``runfiles``), evaluated on the way by ``evaluate`` (the synthetic split and the SWCNN
   protocol), drawn by ``plots`` and ``visuals``. Its pairs come from ``model.synth``.
5. ``infer``: ``Cleaner``, batched tiled inference at any image size (``tiles``: the tiles and
   their blend windows), on an inference-only copy of the U-Net (``fused``) or an int8 one
   (``quant``); ``masks``: ``MaskRule``, the hardened mask that keeps clean pixels bit for bit.

Shared with the detector, outside this package: ``model.device`` (device and precision),
``model.metrics`` (PSNR, SSIM) and ``model.schedule``.
"""
