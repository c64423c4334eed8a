import copy
import sys

import torch

sys.path.insert(0, '.')
from runtime import load_plan
from tests.test_gpu import _cuda_gpt, _cuda_resnet18, _library_bytes, _measured_peak, _midway_plan

torch.backends.cudnn.benchmark = True
for make in (_cuda_gpt, _cuda_resnet18):
    model, x = make()
    lib = _library_bytes(model, x)
    plan, target = _midway_plan(model, x, lib, time_limit=10)
    planned = load_plan(copy.deepcopy(model), plan)
    measured = _measured_peak(planned, x)
    planned.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    consts = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers(), x])
    consts2 = sum(t.untyped_storage().nbytes() for t in [*planned.parameters(), *planned.buffers()])
    after = torch.cuda.memory_allocated() - consts - consts2
    pred = plan.predicted_peak_bytes + lib
    print(make.__name__, 'library eager', lib, 'resident after planned (minus both models)', after,
          'measured', measured, 'predicted', pred, 'ratio', measured / pred, 'target', target,
          'last_peak_bytes(counter)', planned.last_peak_bytes,
          'plan peak', plan.predicted_peak_bytes, flush=True)
    # the same step again, nothing else changed: is the excess stable?
    torch.cuda.reset_peak_memory_stats()
    m2 = _measured_peak(planned, x)
    print('  again', m2, flush=True)
    del planned, model
    torch.cuda.empty_cache()
