"""Paths and references shared by the Python package's tests."""

import os
from pathlib import Path

import pytest
import torch
import transformers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models():
    return ROOT / "artifacts" / "models"


@pytest.fixture(scope="session")
def wasm():
    return Path(os.environ.get("FLEXMODEL_ARTIFACTS", ROOT / "artifacts" / "wasm"))


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained default (setup makes it; never skipped)."""
    path = ROOT / "artifacts" / "smollm2-135m-instruct"
    assert (path / "config.json").exists(), f"{path}: run scripts/setup.sh first"
    return path


@pytest.fixture(scope="session")
def hf():
    """transformers' model of a folder, f32, eval mode (one per folder)."""
    loaded = {}

    def get(path):
        if path not in loaded:
            m = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
            loaded[path] = m.eval()
        return loaded[path]

    return get


def blocks(m):
    return m.transformer.h if hasattr(m, "transformer") else m.model.layers
