"""The site's own privacy policy, enforced against the coordinator, with real processes:
`fedclinic server` + one `fedclinic site --policy FILE` on loopback with TLS, runs submitted
with `fedclinic run` as an adversarial (or careless) coordinator would.

One federation, three runs in order: a dp=off run is refused (require_dp), a DP run of epsilon 2
is admitted by a lifetime budget of 3 and trained with CSPRNG noise (the public-seed replay of
its training does not give its released weights), and a second run of 2 on the same data, under
another run name, is refused (lifetime_epsilon).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import RunConfig
from deploy.certs import init_consortium
from deploy.loopback import Loopback
from simulations.export import export_sites

RUN = ("--sites", "1", "--model", "cnn", "--width", "4", "--num-samples", "240",
       "--local-epochs", "1", "--batch-size", "32", "--rounds", "1")

POLICY = """\
# The hospital's privacy policy (reviewed by its privacy officer)
require_dp = true
max_epsilon_per_run = 2.5
lifetime_epsilon = 3.0
"""


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    init_consortium(root / "certs", ["localhost"], ["127.0.0.1"], ["site-0"])
    data = export_sites(RunConfig(sites=1, num_samples=240), root / "data")
    policy = root / "site-policy.toml"
    policy.write_text(POLICY)
    lb = Loopback(root / "run", root / "certs", data)
    lb.root.mkdir()
    lb.start_server()
    lb.start_site(0, policy=policy)
    lb.wait_site_connected(0)
    yield lb, policy
    lb.close()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _refusals(lb: Loopback) -> list[dict]:
    return [e for e in _lines(lb.site_state(0) / "audit.jsonl") if e["event"] == "refused"
            or e.get("status") not in (None, "ok")]


def _replay_with_public_seed(lb: Loopback, run_dir: Path) -> dict[str, torch.Tensor]:
    """What an honest-but-curious coordinator computes: the site's training replayed from what
    it knows (the run config, its initial model, the seed it sent, sigma/q/steps and the noised
    class counts the site reported) on the site's data. With seeded noise this reproduced the
    update exactly."""
    from client.train_task import local_seed
    from common.datasets import load_dataset
    from common.models import build_model
    from common.training.dp_local import train_local_dp

    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = RunConfig.from_dict({k: v for k, v in summary["config"].items()})
    row = json.loads((run_dir / "privacy_ledger.json").read_text())["sites"]["0"][0]
    site_cfg = cfg.replace(dataset="medmnist", data_path=str(lb.data[0]))
    data = load_dataset(site_cfg)
    task = data.task
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spatial_dims=task.spatial_dims, in_channels=task.channels,
                        num_classes=task.num_classes, norm=cfg.norm, width=cfg.width)
    sent = _lines(run_dir / "metrics.jsonl")[1]["sites"]["0"]["train"]   # its noised counts
    prior = np.array([sent[f"train_class_count_{c}"] for c in range(task.num_classes)])
    train_local_dp(model, data.train, task, cfg, epochs=cfg.local_epochs,
                   seed=local_seed(cfg.seed, 1, 0), noise_multiplier=row["noise_multiplier"],
                   sample_rate=row["sample_rate"], steps=int(row["dp_steps"]),
                   prior_counts=prior if cfg.loss == "logit_adjusted" else None)
    return model.state_dict()


def test_the_sites_policy_holds_against_the_coordinator(hospital):
    lb, policy = hospital

    refused = lb.run(*RUN)                                  # dp=off: refused, run ends cleanly
    text = refused.stdout + refused.stderr
    assert "policy-refused" in text and "require_dp" in text, text
    assert str(policy) not in text and str(lb.data[0]) not in text   # no local path leaves
    assert _refusals(lb), "the refusal is in the site's audit log"

    first = lb.run(*RUN, "--dp", "sample", "--target-epsilon", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = lb.run_dirs()[-1]
    rows = json.loads((run_dir / "privacy_ledger.json").read_text())["sites"]["0"]
    assert rows[-1]["epsilon"] == pytest.approx(2.0, rel=5e-3)   # calibration's tolerance
    assert rows[-1]["epsilon"] <= 2.0

    final = torch.load(run_dir / "final_model.pt", weights_only=False)["state_dict"]
    replay = _replay_with_public_seed(lb, run_dir)
    gaps = [float((final[k].float() - replay[k].float()).abs().max()) for k in final
            if final[k].is_floating_point()]
    assert max(gaps) > 1e-3, "the public-seed replay reproduced the site's released weights"

    second = lb.run(*RUN, "--dp", "sample", "--target-epsilon", "2")   # another run name
    text = second.stdout + second.stderr
    assert "policy-refused" in text and "lifetime_epsilon" in text, text
    assert lb.run_dirs()[-1] != run_dir

    status = subprocess.run([sys.executable, "-m", "fedclinic.cli", "site", "status",
                             "--state", str(lb.site_state(0)), "--policy", str(policy)],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    spent = f"{rows[-1]['lifetime_epsilon_spent']:.3f}"
    assert "3" in status.stdout and spent in status.stdout, status.stdout   # budget 3, ~2 spent
    np.testing.assert_array_less(0, len(_lines(lb.site_state(0) / "audit.jsonl")))
