"""benchmarks/peers.py: our side of the bergson comparison computes what its equivalence check claims."""

from __future__ import annotations

import numpy as np
import torch
from conftest import load_benchmark


def test_our_child_projects_every_decoder_layer_and_its_gradients_match_autograd(tiny_llama, tmp_path,
                                                                                 one_torch_thread):
    module = load_benchmark("peers")
    generator = torch.Generator().manual_seed(0)
    ids = [[0] + torch.randint(1, 300, (n,), generator=generator).tolist() for n in (9, 5, 12, 7)]
    job = {"model": tiny_llama, "model_path": tiny_llama, "ids": ids, "batches": [[1, 3], [0, 2]],
           "pad_id": 0, "p": 2, "threads": 1, "check_examples": 2}

    result = module.child_ours(tmp_path, job, check=True)

    assert len(result["layers"]) == 2 * 7 and not any(n.startswith("model.") for n in result["layers"])
    assert result["dim"] == len(result["layers"]) * 2 * 2
    saved = np.load(tmp_path / "ours.npz")
    names = module.check_names(result["layers"])
    assert sorted(k.removeprefix("grad:") for k in saved.files if k.startswith("grad:")) == sorted(names)
    oracle = module.autograd_gradients(job, names)
    for name in names:
        assert torch.allclose(torch.from_numpy(saved["grad:" + name]).double(), oracle[name], rtol=1e-4, atol=1e-7)
    assert np.all(saved["losses"] > 0) and np.all(saved["sqnorm"] > 0)
    assert saved["warm_exact"].shape == (2,)
