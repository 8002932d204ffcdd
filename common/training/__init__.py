"""Local training, prediction and evaluation shared by sites, baselines and simulations.

One concept per module: `losses` (which loss a run trains with), `optimiser`, `seeding`,
`checks` (what a split must look like), `batches` (items -> tensors on the model's device),
`local` (the local training loop, FedProx term), `prediction` (classification logits,
probabilities, `evaluate`), `seg_inference` (segmentation logits, masks, losses, metrics), and
sample-level DP-SGD: `dp_local` (the DP-SGD loop), `dp_model` (Opacus compatibility, grad-sample
mode), `dp_wrapping` (Opacus wrapping), `poisson_sampling` and `memory` (malloc tuning).

Data stay numpy arrays until a batch is cut: each batch is converted to a tensor on the model's
device, so no DataLoader workers (and no extra processes) are involved. Nothing is printed here;
callers report progress from the returned `TrainResult` and metric dicts.

Every entry point dispatches on the task: classification tasks use ``Split.labels``, a
segmentation task (``task.kind == 'segmentation'``, see `common.seg_data`) uses ``Split.masks``
as per-pixel targets. For segmentation a training *item* is an image or a volume, or, when a 2D
network meets 3D volumes (``volume_mode='slices'``, recognised from the shapes), one axial slice:
training shuffles all slices of all volumes, prediction runs slice by slice and stacks the slices
back into volumes, so metrics are always computed on whole volumes.
"""
