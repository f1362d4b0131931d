"""How rendered engine inputs travel back from a render process (stages/engines/render.py)."""
from __future__ import annotations

import pickle

import pytest

from stages.engines.render import dumps

torch = pytest.importorskip("torch")


def test_a_tensor_travels_as_its_own_elements_not_the_buffer_it_views() -> None:
    """A processor's output can be a slice of a larger tensor; pickled as is it would carry the whole
    buffer (2 MB a request instead of 140 KB, measured on Whisper's padded features)."""
    padded = torch.randn(128, 3000).to(torch.bfloat16)
    features = padded[:, :200]  # a view: its storage is the whole padded tensor
    assert features.untyped_storage().nbytes() == padded.nbytes
    blob = dumps({"input_audio_features": features, "lengths": torch.tensor(200)})
    assert len(blob) < 1.1 * features.nelement() * features.element_size() + 1000
    back = pickle.loads(blob)
    assert back["input_audio_features"].dtype == torch.bfloat16
    assert torch.equal(back["input_audio_features"], features)
    assert back["lengths"].shape == () and back["lengths"].item() == 200


@pytest.mark.parametrize("tensor", [torch.empty(0, 1176), torch.arange(12, dtype=torch.int32).reshape(3, 4).t(),
                                    torch.tensor([True, False])])
def test_empty_transposed_and_bool_tensors_round_trip(tensor: "torch.Tensor") -> None:
    back = pickle.loads(dumps([tensor, "text", 3]))
    assert back[1:] == ["text", 3]
    assert back[0].dtype == tensor.dtype and back[0].shape == tensor.shape and torch.equal(back[0], tensor)
