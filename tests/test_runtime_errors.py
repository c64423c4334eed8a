"""The runtime refuses plans that do not fit, and leaves evaluation alone."""
import copy
import json

import pytest
import torch

from conftest import model_case
from planner import Plan, PlanFormatError, solve
from planner import plan as plan_module
from planner.backends import SolveOptions
from runtime import PlanMismatchError, load_plan


@pytest.fixture(scope="module")
def gpt_plan(tmp_path_factory):
    case = model_case("gpt")
    path = tmp_path_factory.mktemp("plans") / "plan.json"
    # Exact variants only (dropout keeps a bit mask): several steps stay bit-identical.
    solve(case.profile, 0.7, options=SolveOptions(time_limit_s=5, variants="exact")
          ).save(str(path))
    return path


def test_plan_for_another_model_is_refused(gpt_plan):
    other = copy.deepcopy(model_case("gpt").model)
    other.head = torch.nn.Linear(64, 300)  # another vocabulary: another graph
    with pytest.raises(PlanMismatchError, match="does not fit this model: graph"):
        load_plan(other, str(gpt_plan))
    import torchvision
    with pytest.raises(PlanMismatchError, match="does not fit"):
        load_plan(torchvision.models.resnet18().train(), str(gpt_plan))


def test_plan_for_another_dtype_is_refused(gpt_plan):
    model = copy.deepcopy(model_case("gpt").model).double()
    with pytest.raises(PlanMismatchError, match="dtype: plan torch.float32, model torch.float64"):
        load_plan(model, str(gpt_plan))


def test_plan_for_another_device_is_refused(gpt_plan):
    plan = Plan.load(str(gpt_plan))
    plan.device, plan.device_name = "cuda", "NVIDIA H100 80GB HBM3"
    with pytest.raises(PlanMismatchError, match="device: plan cuda, model cpu"):
        load_plan(copy.deepcopy(model_case("gpt").model), plan)


def test_truncated_and_edited_plans_are_refused(gpt_plan, tmp_path):
    text = gpt_plan.read_text()
    (tmp_path / "t.json").write_text(text[: len(text) // 3])
    with pytest.raises(PlanFormatError, match="truncated or corrupt"):
        Plan.load(str(tmp_path / "t.json"))
    data = json.loads(text)
    data["budget_bytes"] += 1
    (tmp_path / "e.json").write_text(json.dumps(data))
    with pytest.raises(PlanFormatError, match="edited or damaged"):
        load_plan(copy.deepcopy(model_case("gpt").model), str(tmp_path / "e.json"))
    with pytest.raises(PlanFormatError, match="does not exist"):
        Plan.load(str(tmp_path / "none.json"))
    (tmp_path / "l.json").write_text("[1, 2]")
    with pytest.raises(PlanFormatError):
        Plan.load(str(tmp_path / "l.json"))
    # A field a later version might add, with its checksum right: named, not a TypeError.
    newer = {k: v for k, v in json.loads(text).items() if k != "checksum"}
    newer["stream_assignment"] = []
    newer["checksum"] = plan_module._checksum(newer)
    (tmp_path / "n.json").write_text(json.dumps(newer))
    with pytest.raises(PlanFormatError, match=r"does not know \(stream_assignment\).*newer"):
        Plan.load(str(tmp_path / "n.json"))


def test_other_input_shape_is_refused(gpt_plan):
    model = load_plan(copy.deepcopy(model_case("gpt").model), str(gpt_plan))
    with pytest.raises(PlanMismatchError, match="input shapes"):
        model(torch.randint(0, 512, (2, 64)))


def test_eval_and_no_grad_run_eagerly(gpt_plan):
    case = model_case("gpt")
    model = load_plan(copy.deepcopy(case.model), str(gpt_plan))
    with torch.no_grad():
        out = model(*case.inputs)
    assert out.grad_fn is None
    model.eval()
    with torch.no_grad():
        expected = copy.deepcopy(case.model).eval()(*case.inputs)
        assert torch.equal(model(*case.inputs), expected)


def test_several_steps_with_an_optimizer(gpt_plan):
    """A plan in an ordinary loop: three SGD steps give eager's parameters."""
    case = model_case("gpt")
    eager = copy.deepcopy(case.model)
    planned_inner = copy.deepcopy(case.model)
    planned = load_plan(planned_inner, str(gpt_plan))
    for model in (eager, planned):
        torch.manual_seed(7)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            loss = model(*case.inputs).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(eager.parameters(), planned_inner.parameters()):
        assert torch.equal(a, b)
