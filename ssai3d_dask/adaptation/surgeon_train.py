"""Training the surgeon (``ssai3d train-surgeon``).

Meta-dataset: for each stack (phantoms of several kinds and real stacks), the
14 zero-shot metrics of every layer of the base model, and as label the
measured benefit of fine-tuning that layer alone: the gain in validation PSNR
(dB, held-out synthesized pairs of that stack) after ``k_steps`` of Adam on
that layer only. The surgeon learns to rank layers within a stack with a
pairwise ranking loss (Adam, lr 1e-4, weight decay 1e-6, as the paper).
Quality is reported as leave-one-stack-out Spearman correlation between the
surgeon's scores and the measured labels, next to the snip fallback's.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from ssai3d_dask.models.checkpoint import load_model
from ssai3d_dask.ops.denoise import calibrate
from ssai3d_dask.adaptation.finetune import finetune, validation_loss
from ssai3d_dask.settings import FinetuneSettings
from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.adaptation.pairs import PairSynthesizer
from ssai3d_dask.adaptation.losses import pairwise_ranking_loss, psnr_loss
from ssai3d_dask.adaptation.training import fit, make_optimizer, split_validation
from ssai3d_dask.adaptation.psf import PSFBank
from ssai3d_dask.adaptation.sampling import sample_lateral_patches, volume_statistics
from ssai3d_dask.adaptation.surgeon import layer_names, normalize_metrics, zero_shot_metrics
from ssai3d_dask.models.surgeon import METRIC_NAMES, Surgeon, features
from ssai3d_dask.io.volume import Volume

logger = logging.getLogger(__name__)


def stack_record(name: str, vol: Volume, base: str = "base", n_patches: int = 48, patch_px: int = 64,
                 k_steps: int = 8, batch: int = 4, seed: int = 0, progress: bool = False) -> dict:
    """Metrics and per-layer fine-tuning benefit for one stack."""
    t0 = time.perf_counter()
    norm = volume_statistics(vol, seed)
    ps = sample_lateral_patches(vol, n_patches, patch_px, norm, seed)
    patches = calibrate(ps.patches, "auto")(ps.patches)
    val_p, train = split_validation(patches, np.random.default_rng(seed), fraction=0.25, minimum=4)
    model, _ = load_model(base)
    model.set_pool_window(model.local_window())
    synth = PairSynthesizer(PSFBank(), isotropic_geometry(vol.shape, vol.voxel_size_um).z_factor)
    val = synth(torch.from_numpy(val_p[:, None]), np.random.default_rng(seed + 1))
    mb, ms = synth(torch.from_numpy(train[: max(4, batch), None]), np.random.default_rng(seed + 2))
    raw = zero_shot_metrics(model, mb, ms, psnr_loss)
    before = -validation_loss(model, *val)
    names = layer_names(model)
    state = copy.deepcopy(model.state_dict())
    labels = []
    for layer in names:
        model.load_state_dict(state)
        finetune(model, [layer], train, synth, FinetuneSettings(iterations=k_steps, batch_size=batch, device="cpu"),
                 progress=False, seed=seed)
        labels.append(-validation_loss(model, *val) - before)
    logger.info("%s: %d layers labelled in %.0f s (best gain %.3f dB)", name, len(names), time.perf_counter() - t0,
                max(labels))
    return {"name": name, "raw_metrics": raw.tolist(), "labels": labels, "layers": names, "val_psnr_base": before}


def fit_surgeon(records: list[dict], epochs: int = 400, lr: float = 1e-4, weight_decay: float = 1e-6,
                seed: int = 0) -> Surgeon:
    torch.manual_seed(seed)
    surgeon = Surgeon()
    opt, _ = make_optimizer(surgeon.parameters(), "adam", lr, weight_decay, iterations=None)
    data = [(features(normalize_metrics(np.array(r["raw_metrics"]))), torch.tensor(r["labels"], dtype=torch.float32))
            for r in records]
    fit(surgeon, lambda it: data[it % len(data)], lambda x, y: pairwise_ranking_loss(surgeon(x), y), opt, None,
        epochs * len(data), desc="surgeon", progress=False)
    return surgeon.eval()


def evaluate_ranking(records: list[dict], **fit_kw) -> dict:
    """Leave-one-stack-out Spearman rho of surgeon scores vs labels, and of the snip fallback."""
    out = {}
    for i, r in enumerate(records):
        s = fit_surgeon(records[:i] + records[i + 1:], **fit_kw) if len(records) > 1 else fit_surgeon(records, **fit_kw)
        norm = normalize_metrics(np.array(r["raw_metrics"]))
        with torch.no_grad():
            scores = s(features(norm)).numpy()
        snip = norm[:, METRIC_NAMES.index("snip")]
        k = max(1, round(0.1 * len(scores)))
        labels = np.array(r["labels"])
        top = lambda sc: float(labels[np.argsort(-sc)[:k]].mean())  # noqa: E731
        out[r["name"]] = {"spearman_surgeon": float(spearmanr(scores, labels)[0]),
                          "spearman_snip": float(spearmanr(snip, labels)[0]),
                          "top10pct_gain_surgeon_db": top(scores), "top10pct_gain_snip_db": top(snip),
                          "top10pct_gain_oracle_db": float(np.sort(labels)[::-1][:k].mean()),
                          "mean_gain_db": float(labels.mean())}
    return out


def train_and_save(out, stacks: list[tuple[str, Volume]], base: str = "base", k_steps: int = 8, seed: int = 0,
                   command: str = "") -> dict:
    """Build the meta-dataset, evaluate leave-one-stack-out, fit on all stacks, write the surgeon + manifest."""
    from pathlib import Path

    from ssai3d_dask import __version__
    from ssai3d_dask.io.files import write_json
    from ssai3d_dask.models.checkpoint import save_network

    t0 = time.perf_counter()
    records = [stack_record(name, vol, base=base, k_steps=k_steps, seed=seed) for name, vol in stacks]
    evaluation = evaluate_ranking(records, seed=seed)
    surgeon = fit_surgeon(records, seed=seed)
    model, base_manifest = load_model(base)
    manifest = {"kind": "surgeon", "package_version": __version__, "base_config": model.config.to_dict(),
                "base_sha256": base_manifest.get("sha256"), "stacks": [r["name"] for r in records],
                "label": f"validation PSNR gain (dB) after {k_steps} Adam steps on the layer alone",
                "loss": "pairwise ranking (RankNet)", "optimizer": "Adam lr 1e-4 weight decay 1e-6, 400 epochs",
                "leave_one_stack_out": evaluation, "parameters": sum(p.numel() for p in surgeon.parameters()),
                "seconds": round(time.perf_counter() - t0, 1), "command": command}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_network(surgeon, out, manifest)
    write_json(out.with_suffix(".json"), manifest | {"meta_dataset": records}, indent=1)
    return manifest
