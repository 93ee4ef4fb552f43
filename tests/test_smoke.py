"""``drsearch run STUDY --smoke``: every shipped study shrunk, and really run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from drsearch.cli import cli
from drsearch.config.space import CategoricalParam, FloatParam
from drsearch.config.study import load_study
from drsearch.inspect.report.plots import SECTIONS
from drsearch.search.smoke import smoke_study, tiny_model
from tests.conftest import sampled_recipes

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["effb2", "fixres_progressive", "medsiglip_lora"]


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("efficientnet_b2", ("test_efficientnet", {})),
        ("tf_efficientnet_lite0", ("test_efficientnet", {})),
        ("convnext_tiny", ("test_convnext", {})),
        ("resnet50", ("test_resnet", {})),
        (
            "vit_so400m_patch14_siglip_384",
            ("vit_so400m_patch14_siglip_384", {"embed_dim": 64, "depth": 2, "num_heads": 4}),
        ),
        ("mobilenetv3_small_050", ("mobilenetv3_small_050", {})),
    ],
)
def test_tiny_stand_ins(name: str, expected: tuple[str, dict]) -> None:
    assert tiny_model(name) == expected


@pytest.mark.parametrize("name", STUDIES)
def test_smoke_version_is_small_and_separate(name: str, at_root: None, tmp_path: Path) -> None:
    loaded = load_study(Path(f"studies/{name}.yaml"), {"run_root": str(tmp_path)})
    small = smoke_study(loaded)
    cfg, recipe = small.config, small.recipe
    assert cfg.storage_url() == f"sqlite:///{tmp_path / 'smoke' / f'{name}.db'}"
    assert cfg.budget.n_trials == 2 and cfg.resources.gpus_per_trial == 0
    assert recipe.train.device == "cpu"
    on_gpu = smoke_study(loaded, use_gpu=True)
    assert on_gpu.config.resources.gpus_per_trial == min(loaded.config.resources.gpus_per_trial, 1)
    assert on_gpu.recipe.train.device == loaded.recipe.train.device
    assert cfg.executor == loaded.config.executor and cfg.objective == loaded.config.objective
    assert recipe.data.kind == "synthetic" and recipe.data.synthetic.n == 60
    assert max(recipe.data.sizes()) <= 96 and recipe.model.pretrained is False
    assert recipe.train.epochs == max(2, len(loaded.recipe.data.progressive))
    assert recipe.train.grad_accum == loaded.recipe.train.grad_accum
    assert recipe.model.lora == loaded.recipe.model.lora
    assert recipe.loss == loaded.recipe.loss and recipe.augment == loaded.recipe.augment
    assert set(small.space) == set(loaded.space)
    # every sampled smoke trial is a valid recipe that fits in its epochs
    assert len(sampled_recipes(recipe, small.space, 20, seed=1)) == 20


def test_epoch_valued_bounds_shrink_with_the_run(at_root: None, tmp_path: Path) -> None:
    effb2 = smoke_study(load_study(Path("studies/effb2.yaml"), {"run_root": str(tmp_path)}))
    warmup = effb2.space["schedule.warmup_epochs"]  # 0..2.5 of 20 epochs -> 0..0.25 of 2
    assert isinstance(warmup, FloatParam) and (warmup.low, warmup.high) == (0.0, 0.25)
    t0 = effb2.space["schedule.t0"]  # 2..8 of 20 -> 1 (a single choice)
    assert isinstance(t0, CategoricalParam) and t0.choices == [1]
    assert effb2.space["schedule.t0"].when == {"schedule.name": "cosine_restarts"}
    batch = effb2.space["train.batch_size"]
    assert isinstance(batch, CategoricalParam) and batch.choices == [8]
    fixres = smoke_study(
        load_study(Path("studies/fixres_progressive.yaml"), {"run_root": str(tmp_path)})
    )
    phases = [fixres.space[f"data.progressive.{i}.epoch"] for i in (1, 2)]
    assert [p.choices for p in phases] == [[1], [2]]  # one epoch per phase
    assert [p.size for p in fixres.recipe.data.progressive] == [64, 88, 96]


def _smoke(name: str, root: Path) -> list[optuna.trial.FrozenTrial]:
    result = CliRunner().invoke(
        cli, ["run", f"studies/{name}.yaml", "--smoke", "--run-root", str(root), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert f"smoke run of studies/{name}.yaml" in result.output
    # the next steps open this very study: same --smoke and --run-root
    assert f"drsearch trials studies/{name}.yaml --smoke --run-root {root}" in result.output
    storage = f"sqlite:///{root / 'smoke' / f'{name}.db'}"
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "name",
    # fixres's phases are also pinned by test_fit (its sizes, augmentation on): `make test-all`
    [pytest.param(n, marks=pytest.mark.slow) if n == "fixres_progressive" else n for n in STUDIES],
)
def test_smoke_study_runs_end_to_end_on_ray(
    name: str, at_root: None, tmp_path: Path, ray_cluster: None
) -> None:
    trials = _smoke(name, tmp_path)
    assert len(trials) == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [
        (t.state, t.user_attrs.get("fail_reason")) for t in trials
    ]
    for t in trials:
        assert t.user_attrs["executor"] == "ray" and t.intermediate_values
        run_dir = Path(t.user_attrs["run_dir"])
        info = json.loads((run_dir / "run.json").read_text())
        assert t.user_attrs["trainable_params"] == info["parameters"]["trainable"]
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert all(e["augmentations"] for e in epochs)  # training augmentation every epoch
        if name == "medsiglip_lora":
            params = info["parameters"]
            assert params["lora"] > 0 and params["trainable"] < params["total"] / 5
        if name == "fixres_progressive" and t.state == TrialState.COMPLETE:
            assert [e["image_size"] for e in epochs] == [64, 88, 96]
    if name == "effb2":  # a second --smoke starts from scratch, not with its budget spent
        assert len(_smoke(name, tmp_path)) == 2


def test_smoke_refuses_a_storage(at_root: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["run", "studies/effb2.yaml", "--smoke", "--storage", "sqlite:///x.db"]
    )
    assert result.exit_code == 2
    assert "--smoke keeps its own SQLite file" in result.output


def test_missing_weights_stop_a_real_run_before_any_trial(at_root: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["run", "studies/medsiglip_lora.yaml", "--run-root", str(tmp_path), "--quiet"]
    )
    assert result.exit_code == 2
    weights = Path.cwd() / "weights/medsiglip-448/model.safetensors"  # resolved from the cwd
    assert f"model.pretrained: weights file {weights} not found" in result.output
    assert not list(tmp_path.iterdir())  # no database, no trial folders


@pytest.mark.e2e
def test_report_export_and_diagnose_open_the_smoke_study(
    at_root: None, tmp_path: Path, ray_cluster: None
) -> None:
    import yaml

    trials = _smoke("medsiglip_lora", tmp_path)
    smoke = ["--smoke", "--run-root", str(tmp_path)]
    runner = CliRunner()
    report = runner.invoke(
        cli, ["report", "studies/medsiglip_lora.yaml", *smoke, "--out", str(tmp_path / "rep")]
    )
    assert report.exit_code == 0, report.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<title>drsearch report: medsiglip_lora</title>" in html
    assert html.count("<section id=") == len(SECTIONS) and "section id='curves'" in html
    out = tmp_path / "best.yaml"
    export = runner.invoke(
        cli, ["export", "studies/medsiglip_lora.yaml", *smoke, "--trial", "0", "-o", str(out)]
    )
    assert export.exit_code == 0, export.output
    pinned = yaml.safe_load(out.read_text())
    assert pinned["model"]["lora"]["r"] == trials[0].params["model.lora.r"]
    assert pinned["pinned"]["provenance"]["trial"] == 0
    diagnosis = runner.invoke(
        cli, ["diagnose", "studies/medsiglip_lora.yaml", *smoke, "--trial", "0"]
    )
    assert diagnosis.exit_code == 0 and "evidence:" in diagnosis.output
    refused = runner.invoke(
        cli, ["report", "studies/medsiglip_lora.yaml", "--smoke", "--storage", "sqlite:///x.db"]
    )
    assert refused.exit_code == 2 and "drop --storage" in refused.output
