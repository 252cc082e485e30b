"""Resume the optimizer state by parameter name, not by position."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper

from ...models.backbones.base import TLABackbone
from ...registry import HOOKS

__all__ = ['OptimizerParamNamesHook', 'PARAM_NAMES_KEY']

#: The checkpoint key holding the parameter names in the optimizer's order.
PARAM_NAMES_KEY = 'optimizer_param_names'


def _model(runner):
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def optimizer_param_names(model, optimizer) -> list[str] | None:
    """The names of ``optimizer``'s parameters in its own order (param groups, then their params), or
    ``None`` when one of them is not a parameter of ``model``."""
    name_of = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    names = [name_of.get(id(p)) for group in optimizer.param_groups for p in group['params']]
    return None if None in names else names


def _renamed(model, names: list[str]) -> list[str]:
    """``names`` after every :class:`TLABackbone` of ``model`` renamed its former keys (PVT's flat names)."""
    table = {name: i for i, name in enumerate(names)}
    for prefix, module in model.named_modules():
        if isinstance(module, TLABackbone):
            module.rename_former_keys(table, f'{prefix}.' if prefix else '')
    out = [''] * len(names)
    for name, i in table.items():
        out[i] = name
    return out


def _names_in_saved_order(checkpoint: dict, model, count: int) -> list[str] | None:
    """For a checkpoint without :data:`PARAM_NAMES_KEY`: its parameters in the order of its state dict,
    which is the order mmengine's optimizer constructors add them in (``named_parameters``)."""
    keys = [k[len('module.'):] if k.startswith('module.') else k for k in checkpoint.get('state_dict', {})]
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    names = [n for n in _renamed(model, keys) if n in params]
    return names if len(names) == count else None


def _reordered(saved_state: dict, saved: list[str], current: list[str], optimizer) -> dict | None:
    """The optimizer state dict ``saved_state`` (its parameters named ``saved``) rearranged for
    ``optimizer`` (its parameters named ``current``), or ``None`` when the groups do not correspond."""
    where = {name: i for i, name in enumerate(saved)}
    group_of = {i: g for g, group in enumerate(saved_state['param_groups']) for i in group['params']}
    state, groups, start = {}, [], 0
    for group in optimizer.param_groups:
        idx = list(range(start, start + len(group['params'])))
        start += len(idx)
        sources = {group_of[where[current[j]]] for j in idx}
        if len(sources) != 1:
            return None
        new = {k: v for k, v in saved_state['param_groups'][sources.pop()].items() if k != 'params'}
        new['params'] = idx
        groups.append(new)
        for j in idx:
            if where[current[j]] in saved_state['state']:
                state[j] = saved_state['state'][where[current[j]]]
    return {**saved_state, 'state': state, 'param_groups': groups}


@HOOKS.register_module()
class OptimizerParamNamesHook(Hook):
    """Match the resumed optimizer state to the parameters by name, so that a model whose parameters were
    reordered or renamed since the checkpoint resumes correctly.

    torch's ``Optimizer.load_state_dict`` matches by position: after a refactor that moves parameters
    (PVT v1's position embeddings into ``stages[i]``) a resume fails on a shape mismatch, or, worse,
    loads another parameter's moments.  This hook

    * writes the parameter names in the optimizer's order into every checkpoint
      (``checkpoint['optimizer_param_names']``), and
    * when a checkpoint with optimizer state is loaded, reads its names (or, for a checkpoint without
      them, its state dict's parameter order, the order mmengine's optimizer constructors use), renames
      former keys through the backbones' ``rename_former_keys``, and, when the same parameters sit in
      another order, rearranges the saved state and param groups before mmengine loads them.

    When the names differ (not just their order), or the param groups do not correspond, it leaves the
    state alone and logs why; mmengine then loads it as usual.
    """

    priority = 'VERY_HIGH'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'optimizer' in checkpoint and isinstance(runner.optim_wrapper, OptimWrapper):
            names = optimizer_param_names(_model(runner), runner.optim_wrapper.optimizer)
            if names is not None:
                checkpoint[PARAM_NAMES_KEY] = names

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        wrapper = runner.optim_wrapper
        if 'optimizer' not in checkpoint or not isinstance(wrapper, OptimWrapper):
            return
        model = _model(runner)
        current = optimizer_param_names(model, wrapper.optimizer)
        if current is None:
            return
        saved = checkpoint.get(PARAM_NAMES_KEY)
        saved = _renamed(model, saved) if saved is not None else _names_in_saved_order(checkpoint, model, len(current))
        if saved is None or saved == current:
            return
        if sorted(saved) != sorted(current):
            differ = sorted(set(saved) ^ set(current))
            runner.logger.warning(f'OptimizerParamNamesHook: the checkpoint\'s optimizer holds other parameters '
                                  f'({len(differ)} names differ, e.g. {differ[:3]}); loading it by position')
            return
        state = _reordered(checkpoint['optimizer'], saved, current, wrapper.optimizer)
        if state is None:
            runner.logger.warning('OptimizerParamNamesHook: the param groups of the checkpoint do not correspond '
                                  'to this optimizer\'s; loading the optimizer state by position')
            return
        checkpoint['optimizer'] = state
        moved = sum(a != b for a, b in zip(saved, current))
        runner.logger.info(f'OptimizerParamNamesHook: optimizer state matched by parameter name ({moved} of '
                           f'{len(current)} parameters sit elsewhere than in the checkpoint)')
