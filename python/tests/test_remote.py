"""`flexmodel.remote(url, key)` against a real `flexmodel serve` started on
loopback: the same calls give what the local engine gives; keys and
refusals surface as FlexModelError."""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

import flexmodel

IDS = [[5, 17, 3, 99, 42, 8], [64, 2, 30, 7, 11, 90]]


def binary():
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/flexmodel/target"))
    path = Path(os.environ.get("FLEXMODEL_BIN", Path(target) / "release" / "flexmodel"))
    assert path.exists(), f"{path}: build the flexmodel binary first (scripts/test.sh does)"
    return str(path)


@pytest.fixture(scope="module")
def server(models):
    state = tempfile.mkdtemp(prefix="flexmodel-py-serve-")
    key = subprocess.run(
        [binary(), "serve", "keys", "add", "--state", state, "--tenant", "notebook"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    proc = subprocess.Popen(
        [binary(), "serve", "--state", state, "--model", str(models / "gpt2-tiny"),
         "--listen", "127.0.0.1:0", "--allow-unsigned"],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    yield line.removeprefix("listening on "), key
    proc.kill()
    proc.wait()


def test_remote_calls_equal_the_local_engine(server, models, wasm):
    url, key = server
    local = flexmodel.load(models / "gpt2-tiny")
    far = flexmodel.remote(url, key).load()
    assert [p[0] for p in far.hook_points()] == [p[0] for p in local.hook_points(1)]
    names = ["blocks.*.hook_resid_post"]
    a, ca = local.run_with_cache(IDS, names_filter=names)
    b, cb = far.run_with_cache(IDS, names_filter=names)
    assert torch.equal(a, b)
    assert set(ca) == set(cb) and len(ca) == 2
    for k in ca:
        assert torch.equal(ca[k], cb[k]), k
    assert torch.equal(cb["blocks.1.hook_resid_post"], cb["transformer.h.1"])
    scale = flexmodel.Plugin(wasm / "scale.wasm", config={"factor": 0.5})
    hooks = [("blocks.0.hook_resid_post", scale)]
    assert torch.equal(local.run_with_hooks(IDS, fwd_hooks=hooks), far.run_with_hooks(IDS, fwd_hooks=hooks))
    got = far.generate([IDS[0]], max_new_tokens=4, hooks=hooks, ignore_eos=True)
    want = local.generate([IDS[0]], max_new_tokens=4, hooks=hooks, ignore_eos=True)
    assert got.new_tokens == want.new_tokens


def test_remote_refusals_are_flexmodel_errors(server, wasm):
    url, key = server
    with pytest.raises(flexmodel.FlexModelError, match="401"):
        flexmodel.remote(url, key + "x").load()
    far = flexmodel.remote(url, key).load()
    with pytest.raises(flexmodel.FlexModelError, match="Python callable"):
        far.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, h: None)])
    with pytest.raises(flexmodel.FlexModelError, match="backward"):
        far.backward(IDS, loss=("logit_diff", -1, 1, 2))
    bad = flexmodel.Plugin(wasm / "scale.wasm", config={"factor": "no"})
    with pytest.raises(flexmodel.FlexModelError, match="400|invalid"):
        far.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", bad)])
