"""report.md: the run for people, section by section, from the `RunRecord`."""

from __future__ import annotations

from pathlib import Path

from common import rundir
from common.report.privacy import ClientPrivacy, SamplePrivacy
from common.report.record import RunRecord, SkippedFile
from common.report.tables import audit_text, privacy_table
from common.segmentation import EMPTY_MASK_CONVENTION

SHOWN_SKIPPED = 20


def header(record: RunRecord) -> list[str]:
    """Title and the run's settings in one paragraph, and how the sites are scored."""
    cfg = record.config
    data = (f"Label heterogeneity {record.heterogeneity:.3f} (0 = IID)."
            if record.heterogeneity is not None else
            "Deployed run: every site trained on its own data.")
    return [
        f"# fedclinic run: {cfg.dataset}, {cfg.sites} sites, partition `{cfg.partition}`", "",
        f"Model `{cfg.model}` (norm {cfg.norm}, width {cfg.width}), strategy `{cfg.strategy}`, "
        f"{record.rounds} rounds x {cfg.local_epochs} local epoch(s), batch {cfg.batch_size}, "
        f"lr {cfg.lr}, seed {cfg.seed}. Wall time {round(record.wall_seconds, 2):.1f} s. {data}",
        "",
        "Each site is scored on its own test split; baselines use the same model, initial weights "
        "and number of epochs. `local` = the site's own model; its global-test row is the mean "
        "of the local models.", ""]


def segmentation_notes(record: RunRecord) -> list[str]:
    """How Dice and HD95 were computed, and how 3D volumes were predicted."""
    task, volume = record.task, ""
    data_dims = getattr(task, "data_dims", None)
    if data_dims == 3 and getattr(task, "spatial_dims", None) == 2:
        volume = (" The 3D volumes were segmented slice by slice by a 2D network and stacked "
                  "back, so the metrics are volumetric.")
    elif data_dims == 3 and record.config.roi_size:
        volume = (f" The 3D volumes were predicted by sliding windows of {record.config.roi_size} "
                  f"voxels a side (Gaussian-blended).")
    return ["Segmentation: Dice and HD95 (95th-percentile Hausdorff distance, in pixels/voxels) "
            "of the argmax mask of each test image, averaged over the images and the foreground "
            f"classes; 'did federation help' compares Dice.{volume} {EMPTY_MASK_CONVENTION}", ""]


def overlay_section(overlays: dict[str, list[str]]) -> list[str]:
    """Markdown linking each site's overlay PNGs (paths relative to the run directory)."""
    if not overlays:
        return []
    lines = ["## Predictions on test cases", "",
             "Final global model on test cases of each site's own test split: image, ground "
             "truth and prediction (3D: the middle axial slice).", ""]
    for site, paths in overlays.items():
        links = " ".join(f"![site {site} case {i + 1}]({path})" for i, path in enumerate(paths))
        lines += [f"Site {site}: " + ", ".join(f"[{Path(p).name}]({p})" for p in paths), "",
                  links, ""]
    return lines


def exclusions_section(history: list[dict]) -> list[str]:
    """Every site left out of a round (failed, timed out, refused) and why; skipped rounds."""
    rows = []
    for line in history:
        for who, reason in line.get("failures", {}).items():
            rows.append(f"- round {line['round']}: {who}: {reason}")
        if line.get("skipped"):
            rows.append(f"- round {line['round']}: not aggregated: {line['skipped']}")
    if not rows:
        return []
    return ["## Sites excluded from rounds", "",
            "A round aggregates the replies that arrived in time if the quorum held; these did "
            "not take part:", "", *rows, ""]


def skipped_section(skipped: tuple[SkippedFile, ...]) -> list[str]:
    """The data files left out of training, the first SHOWN_SKIPPED of them by name."""
    if not skipped:
        return []
    more = len(skipped) - SHOWN_SKIPPED
    return [f"**{len(skipped)} data file(s) were skipped** (training used the valid ones; "
            f"`--strict` makes a bad file fatal):", "",
            *[f"- {s.file}: {s.reason}" for s in skipped[:SHOWN_SKIPPED]],
            *([f"- ... and {more} more (see summary.json)"] if more > 0 else []), ""]


def audit_section(record: RunRecord) -> list[str]:
    if record.audit is None:
        return []
    lines = ["## Empirical privacy audit", "", audit_text(record.audit), ""]
    return lines + ([record.audit_note, ""] if record.audit_note else [])


def client_privacy_section(p: ClientPrivacy) -> list[str]:
    curve = ", ".join(f"r{r}: {e:.2f}" for r, e in p.per_round.items())
    return ["## Privacy", "",
            f"Client-level DP (Flower's server-side fixed clipping, clip "
            f"{p.plan.clipping_norm:g}, sigma {p.plan.noise_multiplier:.3f}, Flower's RDP "
            f"accountant, no sampling amplification): epsilon {p.epsilon:.2f} at delta "
            f"{p.plan.delta:.2e} for the whole run ({curve}). {p.plan.warning}. The local and "
            f"pooled baselines are not private.", ""]


def sample_privacy_section(p: SamplePrivacy) -> list[str]:
    """Each site's own budget and cumulative epsilon per round, and who stopped on a spent one."""
    lines = ["## Privacy", "",
             f"Sample-level DP-SGD at each site (Opacus, {p.accountant.upper()} accountant, clip "
             f"{p.max_grad_norm:g}), target epsilon {p.target_epsilon:g} per site for the whole "
             f"run unless a site set a smaller one of its own (its `target epsilon` below). Each "
             f"epsilon below is cumulative: the privacy spent by the site from the first round up "
             f"to that round, recomputed by the site's own ledger. Largest final epsilon: "
             f"{p.max_epsilon:.3f}.", "", privacy_table(p)]
    lines += [f"- node {node} stopped training at round {info.round}: {info.reason}"
              for node, info in p.exhausted.items()]
    return lines + [""]


def privacy_section(privacy: SamplePrivacy | ClientPrivacy | None) -> list[str]:
    if isinstance(privacy, ClientPrivacy):
        return client_privacy_section(privacy)
    if isinstance(privacy, SamplePrivacy):
        return sample_privacy_section(privacy)
    return []


def report_markdown(record: RunRecord, sites_table: str, partition: bool) -> str:
    """report.md; ``sites_table`` is `tables.sites_table` of the summary, ``partition`` whether
    the run directory holds a partition report to link."""
    lines = [*header(record), sites_table,
             *(segmentation_notes(record) if record.is_segmentation else []),
             f"![learning curve]({rundir.CURVE})", ""]
    if partition:
        lines += ["Partition: see [partition.md](partition.md) and ![partition](partition.png).",
                  ""]
    lines += exclusions_section(record.history) + skipped_section(record.skipped_files)
    if record.stopped_early:
        lines += [f"**The run stopped early:** {record.stopped_early}.", ""]
    lines += overlay_section(record.overlays) + audit_section(record)
    return "\n".join(lines + privacy_section(record.privacy))
