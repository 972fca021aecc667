"""A fairseq-train run's progress in one short line at a time, for the terminal of a spine step (the run's whole
output goes to the step's log): the epoch and update it has reached, its training loss and the last validation
loss, at most one line per `every` seconds (said with a training line, which fairseq prints after the epoch's
validation), and the last one when the run ends.

fairseq logs its statistics as `... | INFO | TAG | MESSAGE` with TAG train_inner (every --log-interval updates),
train (an epoch's end) or valid; MESSAGE is `epoch 001:  50 / 770 loss=4.1, ..., num_updates=50, ...` or
`epoch 001 | loss 4.1 | ... | num_updates 21 | ...` with --log-format simple, a JSON object with --log-format json.
"""
import json
import re
import time
from typing import Callable, Dict, Optional, Sequence

EVERY = 10.0  # seconds between two lines on the terminal

_LINE = re.compile(r"\| INFO \| (train_inner|train|valid) \| (.*)$")
_PAIR = re.compile(r"(?:^|[|,\s])([a-z_]+)[= ]([-+0-9.e]+|inf|nan)(?=\s*(?:[|,]|$))")


def stats(line: str) -> Optional[Dict[str, str]]:
    """A fairseq training or validation statistics line -> its tag ("train_inner", "train", "valid") and values as
    printed, the valid_ prefix of --log-format json dropped; None for any other line."""
    m = _LINE.search(line.strip())
    if not m:
        return None
    tag, message = m.groups()
    if message.startswith("{"):
        try:
            values = {k: str(v) for k, v in json.loads(message).items()}
        except ValueError:
            return None
        values = {k[len("valid_"):] if k.startswith("valid_") else k: v for k, v in values.items()}
    else:
        epoch = re.match(r"epoch (\d+)", message)
        values = dict(_PAIR.findall(message))
        if epoch:
            values["epoch"] = str(int(epoch.group(1)))
    return {"tag": tag, **values}


def _goal(argv: Sequence[str], flag: str) -> int:
    argv = [str(a) for a in argv]
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith(flag + "=") else argv[i + 1] if arg == flag and \
            i + 1 < len(argv) else None
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class Progress:
    """An `echo` for util/proc.run of a fairseq-train command `argv`: says "LABEL: epoch E of N, update U, loss L,
    valid loss V" through `say` at most once per `every` seconds; finish() says the last one not yet said."""

    def __init__(self, say: Callable[[str], None], label: str, argv: Sequence[str] = (),
                 every: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        self.say, self.label, self.clock = say, label, clock
        self.every = EVERY if every is None else every
        self.max_epoch, self.max_update = _goal(argv, "--max-epoch"), _goal(argv, "--max-update")
        self.started = self.last_said = clock()
        self.state: Dict[str, str] = {}
        self.pending = False

    def __call__(self, line: str) -> None:
        values = stats(line)
        if values is None:
            return
        if values["tag"] == "valid":  # printed before the epoch's training statistics: said with them
            if "loss" in values:
                self.state["valid"] = values["loss"]
            return
        self.state.update({k: values[k] for k in ("epoch", "num_updates", "loss") if k in values})
        self.pending = True
        if self.clock() - self.last_said >= self.every:
            self._say()

    def finish(self) -> None:
        if self.pending:
            self._say()

    def line(self) -> str:
        parts = []
        if "epoch" in self.state:
            parts.append(f"epoch {self.state['epoch']}" + (f" of {self.max_epoch}" if self.max_epoch else ""))
        if "num_updates" in self.state:
            parts.append(f"update {self.state['num_updates']}" + (f" of {self.max_update}" if self.max_update else ""))
        if "loss" in self.state:
            parts.append(f"loss {self.state['loss']}")
        if "valid" in self.state:
            parts.append(f"valid loss {self.state['valid']}")
        return f"{self.label}: {', '.join(parts)} ({self.clock() - self.started:.0f}s)"

    def _say(self) -> None:
        self.say(self.line())
        self.last_said, self.pending = self.clock(), False
