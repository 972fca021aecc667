"""Weights load into a model of another attention kind whenever the shapes match: checkpoints record their
attention plan and a load into another plan is refused (the records and checks are checkpoints/plan.py).  Wrapper
factories for patches.PATCHES."""
import contextvars
import logging

from ..checkpoints import config
from ..checkpoints.plan import (KEY, OVERRIDE_FLAG, PlanMismatch, check_for_training, check_on_load,
                                plan_record)

# The plan of the model a fairseq-train run built, while its trainer loads a checkpoint (resume or finetune).
TRAINING_PLAN: contextvars.ContextVar = contextvars.ContextVar("kvattn_training_plan", default=None)
logger = logging.getLogger(__name__)


def check_plan_on_load(load):
    """A layer of fairseq.checkpoint_utils.load_checkpoint_to_cpu: `'load_other_plan': True` is taken out of the
    overrides (fairseq would set it on the model config), then the loaded plan is compared with the one the
    overridden config builds, or with the plan of the model a fairseq-train run built."""
    def load_checkpoint_to_cpu(path, arg_overrides=None, *args, **kwargs):
        allowed = False
        if arg_overrides and OVERRIDE_FLAG in arg_overrides:
            arg_overrides = dict(arg_overrides)
            allowed = arg_overrides.pop(OVERRIDE_FLAG)
            if not isinstance(allowed, bool):  # 'False' (a string) is true to Python: never read it as a yes
                raise PlanMismatch(f"--model-overrides: '{OVERRIDE_FLAG}' must be True or False (Python booleans, "
                                   f"unquoted), not {allowed!r}")
        state = load(path, arg_overrides, *args, **kwargs)
        if isinstance(state, dict):
            training = TRAINING_PLAN.get()
            if training is not None:
                check_for_training(path, state, training)
            elif arg_overrides:
                check_on_load(path, state, config.section(state, "model"), allowed)
        return state

    return load_checkpoint_to_cpu


def _recorded(model_cfg):
    try:
        return plan_record(model_cfg)
    except Exception as e:  # noqa: BLE001  (never let the record stop a save; say it is missing)
        logger.warning(f"cannot record the attention plan of this model ({type(e).__name__}: {e})")
        return None


def record_plan(state_dict):
    """fairseq.trainer.Trainer.state_dict: every checkpoint a run saves carries its model's plan."""
    def trainer_state_dict(self):
        state = state_dict(self)
        record = _recorded(self.cfg.model)
        if record is not None:
            state[KEY] = record
        return state

    return trainer_state_dict


def training_plan(load_into):
    """fairseq.trainer.Trainer.load_checkpoint: the plan of the model being trained, while it loads (resume or
    --finetune-from-model)."""
    def trainer_load_checkpoint(self, filename, *args, **kwargs):
        record = _recorded(self.cfg.model)
        token = TRAINING_PLAN.set(record) if record is not None else None
        try:
            return load_into(self, filename, *args, **kwargs)
        finally:
            if token is not None:
                TRAINING_PLAN.reset(token)

    return trainer_load_checkpoint
