"""One change to a profile, from opening the document to committing the result.

Every command that changes a configuration goes through a `ProfileTransaction`:

1. open   the document: its text as it is now (a file, or a profile named by `extends`
          spelling: a path or a built-in name);
2. stage  edits: `set`/`unset` of keys (format-preserving, see edit.py) or a whole new
          text (`replace`, from an editor);
3. check  the staged text: load it with positions, derive the effective configuration
          and validate it against a CPU (the one given, else the profile's, else the
          default) -- a `Verdict`;
4. commit the result: `commit()` writes the file atomically, under its lock, and never
          over a version it did not open; `commit_live(target)` hands the validated
          configuration to a running guest (a live target: `caps`, `mode`, `config`,
          `apply(cfg)`), after the VM-entry checks and the live-change rules.

`vmcfg set`, `unset` and `edit` commit to the file; `vmcfg apply` and `watch` (through
the live session) commit to the guest.  Nothing is written or sent before commit, and
nothing invalid is committed unless the caller forces it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .. import status as S
from .atomic import WriteError, atomic_write, locked
from .source import ProfileError, read_text

__all__ = ["Conflict", "LivePlan", "ProfileTransaction", "Refused", "TransactionError",
           "Verdict", "WriteError"]


class TransactionError(Exception):
    """The staged profile cannot be committed: `status` is the exit status (status.py),
    `errors` the JSON error objects (with rule, fix and location where there are some)."""

    def __init__(self, message: str, status: int, errors: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors = errors or []

    def __str__(self) -> str:
        return self.message


class Refused(TransactionError):
    """The result would be invalid (and the commit was not forced): nothing was written."""


class Conflict(TransactionError):
    """The file changed on disk after the transaction opened it: it was not overwritten."""


@dataclass
class Verdict:
    """A staged text, checked: the Resolved profile, or the error that stopped it loading."""
    resolved: Any = None                 # profile.resolve.Resolved
    load_error: ProfileError | None = None

    @property
    def valid(self) -> bool:
        return self.resolved is not None and self.resolved.valid

    @property
    def config(self):
        """The effective VmxConfig (None when the text does not load)."""
        return self.resolved.config if self.resolved is not None else None

    @property
    def cpu(self) -> str | None:
        return self.resolved.caps.name if self.resolved is not None else None

    def problems(self, *, located_message: bool = True) -> tuple[list[dict], list[dict]]:
        """(errors, warnings) as JSON objects; a load error is one error with its location
        (its message with "file:line:col: " in front unless `located_message` is false)."""
        if self.load_error is not None:
            e = self.load_error
            return [{"rule": None, "message": str(e) if located_message else e.message,
                     "location": e.to_json()}], []
        if self.resolved is None:
            return [], []
        j = self.resolved.to_json()
        return j["errors"], j["warnings"]


@dataclass
class LivePlan:
    """What committing a profile to a running guest changes."""
    config: Any                          # the new VmxConfig
    diff: list[dict] = field(default_factory=list)      # every changed key
    refused: list[dict] = field(default_factory=list)   # the keys a running guest cannot change

    @property
    def would_apply(self) -> bool:
        return not self.refused


class ProfileTransaction:
    """Open -> stage -> check -> commit, for one profile document (see the module doc)."""

    def __init__(self, path: str, text: str, *, caps=None, holds_lock: bool = False):
        self.path = path
        self.original = text
        self.caps = caps                 # a CapSet, or None: the profile's cpu, else the default
        self.changes: list = []          # edit.Change, one per set/unset, in order
        self._holds_lock = holds_lock
        self._editor = None
        self._text = text
        self._verdicts: dict[str, Verdict] = {}

    # ---- open --------------------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def open(cls, path: str, *, caps=None, hold_lock: bool = False
             ) -> Iterator["ProfileTransaction"]:
        """The transaction on the file `path` (ProfileError if it cannot be read).

        With `hold_lock` the file's lock is held from the read to the end of the block, so
        concurrent transactions on one file run one after the other (`vmcfg set`); without
        it (`vmcfg edit`, which waits for a person) the lock is taken only to commit, and
        the commit refuses to overwrite a file that changed since it was read."""
        if hold_lock:
            with locked(path):
                yield cls(path, read_text(path), caps=caps, holds_lock=True)
        else:
            yield cls(path, read_text(path), caps=caps)

    @classmethod
    def of_profile(cls, spec: str, *, caps=None) -> "ProfileTransaction":
        """The transaction on a profile named as `extends` names one (a path or a built-in
        name), for committing to a live target (ProfileError if there is no such profile)."""
        from .loader import find_profile
        path = find_profile(spec)
        return cls(path, read_text(path), caps=caps)

    # ---- stage -------------------------------------------------------------------------
    def _edit(self):
        if self._editor is None:
            from .edit import ProfileEditor
            self._editor = ProfileEditor(self._text, self.path)
        return self._editor

    def set(self, key: str, op: str, value: str):
        """Stage KEY op VALUE (op "=", "+=" or "-="); EditError if the key or value is bad."""
        ch = self._edit().set(key, op, value)
        self.changes.append(ch)
        return ch

    def unset(self, key: str):
        """Stage the removal of KEY (or of a whole table); EditError if the key is bad."""
        ch = self._edit().unset(key)
        self.changes.append(ch)
        return ch

    def replace(self, text: str) -> None:
        """Stage a whole new text (what an editor saved)."""
        self._editor = None
        self._text = text

    @property
    def text(self) -> str:
        """The staged text."""
        return self._editor.text() if self._editor is not None else self._text

    @property
    def changed(self) -> bool:
        return self.text != self.original

    # ---- check -------------------------------------------------------------------------
    def _verdict(self, text: str) -> Verdict:
        v = self._verdicts.get(text)
        if v is None:
            from .loader import load_profile_text
            from .resolve import load_caps, resolve_profile
            try:
                prof = load_profile_text(text, self.path)
                caps = self.caps if self.caps is not None else load_caps(None, None, prof)
                v = Verdict(resolve_profile(prof, caps))
            except ProfileError as e:
                v = Verdict(load_error=e)
            self._verdicts[text] = v
        return v

    def check(self) -> Verdict:
        """The staged text, loaded and validated; each staged change gets its effective
        value before and after (`Change.before`/`.after`)."""
        v = self._verdict(self.text)
        if self.changes:
            from .keys import effective_value
            old = self.before()
            for ch in self.changes:
                ch.before = effective_value(old.resolved, ch.key) if old.resolved else None
                ch.after = effective_value(v.resolved, ch.key) if v.resolved else None
        return v

    def before(self) -> Verdict:
        """The text as it was opened, loaded and validated."""
        return self._verdict(self.original)

    # ---- commit to the file --------------------------------------------------------------
    def commit(self, *, force: bool = False, dry_run: bool = False,
               overwrite: Callable[[], bool] | None = None) -> bool:
        """Write the staged text over the file, atomically; True if it was written.

        Nothing is written when nothing changed or with `dry_run`.  An invalid result is
        refused (Refused) unless `force`.  A file that changed on disk since it was opened
        is not overwritten (Conflict) unless `overwrite()` -- asked under the lock -- says
        so.  WriteError if the file cannot be written (it is then unchanged)."""
        v = self.check()
        if self.changed and not v.valid and not force:
            errors, _ = v.problems()
            raise Refused(f"{self.path}: the result would be invalid", S.INVALID, errors)
        if not self.changed or dry_run:
            return False
        if self._holds_lock:
            atomic_write(self.path, self.text)
            return True
        with locked(self.path):
            try:
                current = read_text(self.path)
            except ProfileError:
                current = None
            if current != self.original and not (overwrite is not None and overwrite()):
                raise Conflict(f"{self.path} changed on disk since it was opened", S.INVALID)
            atomic_write(self.path, self.text)
        return True

    # ---- commit to a running guest --------------------------------------------------------
    def plan_live(self, target, *, name: str | None = None) -> LivePlan:
        """What committing the staged profile to `target` would change (TransactionError if
        it cannot: a profile that does not load (USAGE), is invalid on the guest's CPU or
        would make VM entry fail (INVALID)).  `name` is how messages name the profile."""
        from ..vmx.configdiff import diff_configs
        from ..vmx.rules import check_entry_state
        name = name or self.path
        if self.caps is not target.caps:          # checked against the guest's own CPU
            self.caps = target.caps
            self._verdicts.clear()
        v = self.check()
        if v.load_error is not None:
            raise TransactionError(str(v.load_error), S.USAGE, [v.load_error.to_json()])
        r = v.resolved
        if not r.valid:
            raise TransactionError(f"{name} is invalid on {r.caps.name}", S.INVALID,
                                   r.to_json()["errors"])
        entry = check_entry_state(r.config, target.caps, target.mode)
        if entry:
            raise TransactionError("the change would make VM entry fail", S.INVALID,
                                   [x.to_json() for x in entry])
        cfg = _keep_running_guest(r.config, target.config, r.profile)
        diff = diff_configs(target.config, cfg)
        return LivePlan(cfg, diff, [d for d in diff if not d["live"]])

    def commit_live(self, target, plan: LivePlan) -> dict:
        """Hand the planned configuration to `target` (between two guest instructions):
        {"instructions", "tsc"} at which it took effect.  Refused (nothing sent) when the
        plan changes a key a running guest cannot change."""
        if plan.refused:
            keys = ", ".join(d["key"] for d in plan.refused)
            raise Refused(f"cannot change {keys} on a running guest (needs a new guest)",
                          S.INVALID)
        return target.apply(plan.config)


def _keep_running_guest(new, running, profile):
    """The settings a running guest cannot change (the [guest] table: image, mode, memory...)
    that the applied profile does not write keep the running guest's values: applying
    `trap-all` to a guest launched from `linux` (256 MiB) is not a request for 16 MiB.  A
    value the profile (or a profile it extends) writes is compared, and refused if it
    differs."""
    from ..vmx.config import VmxConfig
    from ..vmx.configdiff import NOT_LIVE_TABLES
    settings = None
    for t in NOT_LIVE_TABLES:
        written = (getattr(profile, "settings", None) or {}).get(t, {})
        keep = {k: v for k, v in running.settings.get(t, {}).items() if k not in written}
        if any(new.settings.get(t, {}).get(k) != v for k, v in keep.items()):
            settings = settings or {tt: dict(vv) for tt, vv in new.settings.items()}
            settings[t].update(keep)
    if settings is None:
        return new
    return VmxConfig(controls=dict(new.controls), settings=settings, cpu=new.cpu, name=new.name)
