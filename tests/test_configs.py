"""Every YAML config shipped in pipelines/ is accepted by `boostray train --config`."""

import glob
import os

import pytest

from boostray.config import TrainConfig, read_config_file

ROOT = os.path.dirname(os.path.dirname(__file__))
SERVE_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "pipelines", "serve_*.yaml")))
TRAIN_CONFIGS = sorted(set(glob.glob(os.path.join(ROOT, "pipelines", "*.yaml"))) - set(SERVE_CONFIGS))


def test_there_are_shipped_configs():
    assert len(TRAIN_CONFIGS) >= 3


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=os.path.basename)
def test_shipped_train_config_validates(path):
    TrainConfig(**read_config_file(path))  # raises ConfigError if any key or value is bad


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=os.path.basename)
def test_shipped_serve_config_arguments_validate(path):
    import yaml

    from boostray.config import ServeOptions

    apps = yaml.safe_load(open(path))["applications"]
    assert [a["import_path"] for a in apps] == ["boostray.apps.serving:build_app"]
    ServeOptions(**apps[0]["args"])


def test_python_dash_m_boostray_is_the_boostray_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "boostray", "models"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "small_cnn" in out.stdout
