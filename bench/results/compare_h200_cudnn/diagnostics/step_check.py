import copy
import sys

import torch

sys.path.insert(0, '.')
from runtime import executor as ex
from runtime import load_plan
from tests.test_gpu import _cuda_resnet18, _library_bytes, _measured_peak, _midway_plan

torch.backends.cudnn.benchmark = True
model, x = _cuda_resnet18()
lib = _library_bytes(model, x)
plan, target = _midway_plan(model, x, lib, time_limit=10)
planned = load_plan(copy.deepcopy(model), plan)
_measured_peak(planned, x)
rows = []
orig = ex.Executor._execute
def wrapped(self, step, env, save_rng):
    torch.cuda.synchronize()
    offset = torch.cuda.memory_allocated() - self.counter.live
    torch.cuda.reset_peak_memory_stats()
    out = orig(self, step, env, save_rng)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - offset
    node = self.fx_nodes[step.runs]
    outs = out if isinstance(out, (tuple, list)) else [out]
    outb = sum(t.untyped_storage().nbytes() for t in outs if isinstance(t, torch.Tensor))
    rows.append((measured - self.counter.live - self.workspace[step.runs] - outb, step.stage, str(node.target)[:60], node.name, self.workspace[step.runs], measured))  # noqa: E501
    return out
ex.Executor._execute = wrapped
planned.zero_grad(set_to_none=True)
planned(x).float().square().mean().backward()
ex.Executor._execute = orig
rows.sort(key=lambda r: -r[0])
for r in rows[:12]:
    print(r)
print('n steps', len(rows), 'offset note: counter.live excludes the output being added')
