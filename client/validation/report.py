"""A validation's outcome: its checks, PHI counts and manifest, and the human report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from client.check import Check
from common.version import __version__


@dataclass(frozen=True)
class ValidationReport:
    data_dir: str
    layout: str
    checks: tuple[Check, ...]
    manifest: dict
    phi: dict[str, int]          # PHI keyword -> number of files with a non-empty value

    @property
    def errors(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "error")

    @property
    def warnings(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        """The human report: one line per check, the PHI table, and the verdict."""
        lines = [f"fedclinic site validate: {self.data_dir} (layout: {self.layout})", ""]
        width = max((len(c.name) for c in self.checks), default=0)
        marks = {"ok": "OK   ", "warning": "WARN ", "error": "ERROR"}
        lines += [f"  [{marks[c.status]}] {c.name.ljust(width)}  {c.detail}" for c in self.checks]
        lines += self._render_phi()
        lines += ["", self._verdict()]
        return "\n".join(lines)

    def _render_phi(self) -> list[str]:
        if not self.phi:
            return []
        width = max(len(k) for k in self.phi)
        rows = [f"    {k.ljust(width)}  {n} file(s)" for k, n in self.phi.items()]
        return ["", "Patient identifiers (PHI) found in DICOM headers (values not shown):", *rows,
                "  These identifiers must not leave this site. fedclinic shares only model "
                "updates and the aggregate manifest, never headers; remove them with your "
                "de-identification tool (DICOM PS3.15 basic profile) before any data export."]

    def _verdict(self) -> str:
        n_err, n_warn = len(self.errors), len(self.warnings)
        if n_err:
            return (f"FAILED: {n_err} error(s), {n_warn} warning(s); fix the errors before this "
                    f"site joins a federation.")
        if n_warn:
            return f"PASSED with {n_warn} warning(s): the site can train; review the warnings."
        return "PASSED: no problems found."


def build_report(data_dir: Path, layout: str, checks: list[Check], stats: dict,
                 phi: dict[str, int]) -> ValidationReport:
    """The report of ``checks``, its manifest holding the layout's aggregate ``stats``."""
    manifest = {
        "fedclinic_version": __version__,
        "layout": layout,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "valid": not any(c.status == "error" for c in checks),
        "errors": sum(c.status == "error" for c in checks),
        "warnings": sum(c.status == "warning" for c in checks),
        **stats,
    }
    return ValidationReport(str(data_dir), layout, tuple(checks), manifest, dict(phi))
