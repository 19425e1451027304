"""--precision 64: the network and its inputs in float64, reported as such."""

import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.lwta import LWTAOptions, lwta_inference
from lwtakit.models import build_model
from lwtakit.models.precision import at_precision, precision_of, precision_text


def test_a_float64_network_takes_the_float32_images_callers_feed_and_computes_the_same_function():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    lwta = build_model("resnet18", 6, act="lwta", lwta=LWTAOptions(U=2)).eval()
    assert precision_of(lwta) == 32 and at_precision(lwta, 32) is lwta and precision_of(lwta) == 32
    with lwta_inference(lwta, "sample"):
        y = at_precision(lwta, 64)(x)
    assert y.dtype == torch.float64 and all(p.dtype == torch.float64 for p in lwta.parameters())
    # the same function: a ReLU net (no winner decided by a near tie) agrees with its float32 self to float32
    # precision (~1e-7 relative a layer, 20 layers deep)
    dense = build_model("resnet18", 6, act="relu").eval()
    y32 = dense(x)
    torch.testing.assert_close(at_precision(dense, 64)(x), y32.double(), rtol=1e-4, atol=1e-5)


def test_precision_other_than_32_or_64_is_one_error_and_reports_name_it():
    with pytest.raises(UserError, match="precision must be 32 or 64"):
        at_precision(torch.nn.Linear(2, 2), 16)
    assert precision_text(64).startswith("float64 (the same figures on any CPU")
    assert "--precision 64" in precision_text(32)
