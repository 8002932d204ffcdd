"""report.md: the run for people, section by section, from the `RunRecord`."""

from __future__ import annotations

from pathlib import Path

from common import rundir
from common.report.coverage import CoveredRelease
from common.report.deployment import deployment_lines, deployment_title
from common.report.operating import operating_section
from common.report.personalised import personalised_note
from common.report.policy import PolicySummary, policy_hex
from common.report.privacy import ClientPrivacy, SamplePrivacy
from common.report.record import RunRecord, SkippedFile
from common.report.tables import audit_text, coverage_table, guarantee_table, privacy_table
from common.segmentation import EMPTY_MASK_CONVENTION

SHOWN_SKIPPED = 20


def header(record: RunRecord) -> list[str]:
    """Title and the run's settings in one paragraph, and how the sites are scored."""
    cfg = record.config
    if record.deployment is not None:           # the sites' declared data, not the config's
        return [deployment_title(cfg, record.deployment), "",
                f"Model `{cfg.model}` (norm {cfg.norm}, width {cfg.width}), strategy "
                f"`{cfg.strategy}`, {record.rounds} rounds x {cfg.local_epochs} local epoch(s), "
                f"batch {cfg.batch_size}, lr {cfg.lr}, seed {cfg.seed}. Wall time "
                f"{round(record.wall_seconds, 2):.1f} s.", "",
                *deployment_lines(record.deployment)]
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
        "of the local models."
        + (f" Initial weights (federation and baselines): `{cfg.init_from}` (--init-from)."
           if cfg.init_from else ""), ""]


def withheld_note(record: RunRecord) -> str:
    """Which sites kept their test metrics of the final model local (their policy, under DP)."""
    last = record.history[-1]["sites"]
    kept = sorted((s for s, v in last.items() if (v.get("test") or {}).get("withheld")), key=int)
    if not kept:
        return ""
    return (f"Site(s) {', '.join(kept)} kept their test metrics local (their privacy policy, "
            f"under DP): their scores are in each site's own local report, not here.")


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
    delta = ("set by the run" if p.plan.delta_given else
             f"the default min(1e-5, 1/(10 x {p.plan.sites} sites))")
    return ["## Privacy", "",
            f"Client-level DP (Flower's server-side fixed clipping, clip "
            f"{p.plan.clipping_norm:g}, sigma {p.plan.noise_multiplier:.3f}, Flower's RDP "
            f"accountant, no sampling amplification): epsilon {p.epsilon:.2f} at delta "
            f"{p.plan.delta:.2e} ({delta}) for the whole run ({curve}). {p.plan.warning}. The "
            f"noise is added by the coordinator, so this protects a hospital from what others "
            f"learn from the model, not from the coordinator. The local and pooled baselines "
            f"are not private.", ""]


def sample_privacy_section(p: SamplePrivacy) -> list[str]:
    """Each site's own budget and cumulative epsilon per round, and who stopped on a spent one."""
    lines = ["## Privacy", "",
             f"Sample-level DP-SGD at each site (Opacus, {p.accountant.upper()} accountant, clip "
             f"{p.max_grad_norm:g}), target epsilon {p.target_epsilon:g} per site for the whole "
             f"run unless a site set a smaller one of its own (its `target epsilon` below). Each "
             f"epsilon below is cumulative: the privacy spent by the site from the first round up "
             f"to that round, recomputed by the site's own ledger. Largest final epsilon: "
             f"{p.max_epsilon:.3f}.", "", privacy_table(p)]
    stops = [f"- node {node} stopped training at round {info.round}: {info.reason}"
             for node, info in p.exhausted.items()]
    stops += [f"- node {node} was refused by its own site policy at round {info.round} (rule "
              f"`{info.rule}`): {info.reason}" for node, info in p.refused.items()]
    return lines + (stops + [""] if stops else []) + guarantee_section(p)


def guarantee_section(p: SamplePrivacy) -> list[str]:
    """Per site: the run's epsilon, delta, accountant; the lifetime budget of its dataset spent
    and left; the policy it enforced; how its noise was drawn."""
    return ["### What each site's guarantee came to", "",
            "Epsilon (run) holds at the delta beside it by the accountant named. Lifetime: "
            "epsilon composed over every run on the site's dataset (its own ledger, keyed by a "
            "fingerprint of its data), against the lifetime budget of its policy; a run that "
            "does not fit in what is left is refused by the site. '-': the site did not report "
            "it.", "", guarantee_table(p), *policy_lines(p), *noise_lines(p)]


def policy_lines(p: SamplePrivacy) -> list[str]:
    ids = {g.policy_id for g in p.guarantees().values()}
    if p.policy is not None:
        other = sorted(policy_hex(i) for i in ids - {p.policy.policy_id, None})
        mismatch = ([f"**Sites reported another policy id than this one:** {', '.join(other)}."]
                    if other else [])
        return [policy_paragraph(p.policy, "every simulated site"), "", *mismatch,
                *([""] if mismatch else [])]
    if ids == {None}:
        return ["The sites reported no site policy (an older fedclinic at the site).", ""]
    return ["Each site enforced its own policy, reviewed by its hospital; the table gives its "
            "id (the first 12 hex digits of the policy's sha256, which the site's `fedclinic "
            "site doctor` prints with the rules). The policy file never leaves the site.", ""]


def policy_paragraph(policy: PolicySummary, who: str) -> str:
    return (f"Policy in force at {who}: `{policy.source}`, sha256 `{policy.digest}` (id "
            f"{policy_hex(policy.policy_id)}). Rules: {policy.rules()}.")


def noise_lines(p: SamplePrivacy) -> list[str]:
    """Whether the DP noise was seeded (reproducible) or drawn from the OS CSPRNG."""
    secure = {site: g.secure_randomness for site, g in p.guarantees().items()}
    if secure and all(v is True for v in secure.values()):
        return ["DP noise and Poisson sampling came from the OS CSPRNG at every site: no seed "
                "reproduces them.", ""]
    if secure and all(v is False for v in secure.values()):
        return ["DP noise and Poisson sampling were seeded from the run seed (simulation): "
                "reproducible, and so no guarantee against anyone who knows the seed; a "
                "deployed site draws them from the OS CSPRNG.", ""]
    named = ", ".join(f"site {s}: {_noise_word(v)}" for s, v in sorted(secure.items()))
    return [f"DP noise and Poisson sampling: {named}.", ""] if named else []


def _noise_word(secure: bool | None) -> str:
    return {True: "OS CSPRNG", False: "seeded (reproducible)", None: "not reported"}[secure]


def coverage_section(released: tuple[CoveredRelease, ...], dp: str) -> list[str]:
    """Every field the sites sent, looked up in the 'what leaves a site' table."""
    if not released:
        return []
    uncovered = [r.field for r in released if not r.covered]
    verdict = ("Every value that left a site is public or protected by DP-SGD or by noise "
               "charged to the site's ledger." if not uncovered else
               f"Not covered by a DP guarantee: {', '.join(uncovered)}"
               + (" (dp='off': nothing is)." if dp == "off" else "."))
    return ["## What left the sites", "",
            "Each field the sites' replies carried during the run, as docs/what-leaves.md "
            "(`common/releases.py`) describes it. " + verdict, "", coverage_table(released)]


def privacy_section(privacy: SamplePrivacy | ClientPrivacy | None) -> list[str]:
    if isinstance(privacy, ClientPrivacy):
        return client_privacy_section(privacy)
    if isinstance(privacy, SamplePrivacy):
        return sample_privacy_section(privacy)
    return []


def selection_section(record: RunRecord) -> list[str]:
    """Which model each method kept and its operating point (`operating_section`)."""
    local = record.baselines.get("local")
    pooled = record.baselines.get("pooled")
    return operating_section(record.selection, local.site_selection if local else {},
                             pooled.selection if pooled else None, record.operating_points(),
                             dp=record.config.dp == "sample")


def report_markdown(record: RunRecord, sites_table: str, partition: bool) -> str:
    """report.md; ``sites_table`` is `tables.sites_table` of the summary, ``partition`` whether
    the run directory holds a partition report to link."""
    note = record.federated.sites_note or withheld_note(record)
    personal = personalised_note(record.personalised)
    lines = [*header(record), sites_table, *([note, ""] if note else []),
             *([personal, ""] if personal else []),
             *(segmentation_notes(record) if record.is_segmentation else []),
             *selection_section(record), f"![learning curve]({rundir.CURVE})", ""]
    if partition:
        lines += ["Partition: see [partition.md](partition.md) and ![partition](partition.png).",
                  ""]
    lines += exclusions_section(record.history) + skipped_section(record.skipped_files)
    if record.stopped_early:
        lines += [f"**The run stopped early:** {record.stopped_early}.", ""]
    lines += overlay_section(record.overlays) + audit_section(record)
    lines += privacy_section(record.privacy)
    return "\n".join(lines + coverage_section(record.released, record.config.dp))
