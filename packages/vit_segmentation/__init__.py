"""vit_segmentation: TransUNet-style medical segmentation on the shared ViT backbone.

Modules: `model` (TransUNet: hybrid or plain ViT encoder, cascaded upsampler), `losses`
(cross-entropy + soft Dice), `datasets` (Synapse npz/h5 as TransUNet distributes it, NIfTI),
`transforms`, `metrics` (per-class 3D Dice and HD95, TransUNet and standard modes), `prepare`
(the MRI-lobe demo data), `config` and `task` (the Task `vit_training.fit` runs).
"""
