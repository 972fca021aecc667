"""Comparing the settings a step was made with against a rerun's: one line naming what changed."""
import difflib
import json


def differences(before, now: dict) -> str:
    """The settings that differ, as `name recorded -> now` (empty when equal); JSON types, as recorded."""
    now = json.loads(json.dumps(now))
    if not isinstance(before, dict):
        return "none recorded" if before != now else ""
    keys = sorted(set(before) | set(now))
    return ", ".join(_change(k, before.get(k), now.get(k)) for k in keys if before.get(k) != now.get(k))


def _change(key: str, before, now) -> str:
    if isinstance(before, list) and isinstance(now, list):  # a flag list: only the part that changed
        before, now = ([x if isinstance(x, (str, int, float, bool, type(None))) else json.dumps(x, sort_keys=True)
                        for x in side] for side in (before, now))
        ops = difflib.SequenceMatcher(a=before, b=now, autojunk=False).get_opcodes()
        return f"{key}: " + "; ".join(f"{' '.join(map(str, before[i1:i2])) or '(none)'} -> "
                                      f"{' '.join(map(str, now[j1:j2])) or '(none)'}"
                                      for tag, i1, i2, j1, j2 in ops if tag != "equal")
    return f"{key} {before!r} -> {now!r}"
