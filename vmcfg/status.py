"""Every outcome of a vmcfg command: its JSON name, its process exit status, its meaning.

This table is the one home of these facts.  The launch result (`vmcfg launch
--json`'s "status"), the smoke expectations, the CLI's exit statuses, the
README's status table and the JSON Schemas all derive from it.

A guest's own result -- the value it writes to the debug-exit port 0xF4 -- is
reported in the "guest_exit_code" field and is never mapped onto these codes:
a guest that writes 0 ends with status 0 ("debug-exit"), any other value with
GUEST_FAILURE, whatever the value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    name: str        # the JSON name ("status" field)
    code: int        # the process exit status
    launch: bool     # an outcome of a guest run (vmcfg launch --json "status")
    meaning: str


OUTCOMES: tuple[Outcome, ...] = (
    Outcome("ok", 0, False, "the command did what was asked"),
    Outcome("halted", 0, True, "the guest halted with nothing left to wake it"),
    Outcome("stopped", 0, True, "a named guest was ended by 'vmcfg stop'"),
    Outcome("poweroff", 0, True, "the guest powered off through ACPI (S5)"),
    Outcome("debug-exit", 0, True,
            "the guest wrote a value to the debug-exit port 0xF4 (the value is in "
            "guest_exit_code; a value other than 0 gives exit status 3)"),
    Outcome("invalid", 1, False,
            "an invalid profile, differences found, or a change refused"),
    Outcome("usage", 2, False, "bad usage or unreadable input (profile, image, handler, file; "
                               "a --kernel that is not a bzImage, too old or too big for "
                               "--memory; a bad --initrd)"),
    Outcome("guest-failure", 3, False,
            "the guest wrote a non-zero value to the debug-exit port 0xF4"),
    Outcome("entry-failure", 4, True, "VM entry failed (exit reason 33 | bit 31)"),
    Outcome("triple-fault", 6, True, "the guest triple-faulted"),
    Outcome("timeout", 8, True, "--timeout reached"),
    Outcome("instruction-limit", 10, True, "--max-instructions reached"),
    Outcome("error", 12, True,
            "a guest access outside its RAM, an EPT violation with on_violation = \"stop\", "
            "or a failing exit handler"),
    Outcome("reboot", 14, True, "the guest reset the machine to reboot (port 0x64 or 0xCF9, or "
                                "the FADT's reset register; Linux rebooting, or after a panic "
                                "with panic=-1), unless the profile's lifecycle.on_reboot = "
                                "\"restart\" boots it again"),
    Outcome("interrupted", 130, True,
            "interrupted: 128 + the signal (130 for Ctrl-C/SIGINT, 143 for SIGTERM); a guest "
            "run is stopped and its report printed"),
)

BY_NAME: dict[str, Outcome] = {o.name: o for o in OUTCOMES}
LAUNCH_STATUSES: tuple[str, ...] = tuple(o.name for o in OUTCOMES if o.launch)

OK = BY_NAME["ok"].code
INVALID = BY_NAME["invalid"].code
USAGE = BY_NAME["usage"].code
GUEST_FAILURE = BY_NAME["guest-failure"].code
INTERRUPTED = BY_NAME["interrupted"].code


def exit_code(status: str, guest_exit_code: int | None = None) -> int:
    """The process exit status of an outcome (a launch status with the guest's value)."""
    if status == "debug-exit" and guest_exit_code:
        return GUEST_FAILURE
    return BY_NAME[status].code


def name_of(code: int) -> str:
    """The JSON name of a (non-launch) exit status, for JSON error objects."""
    for o in OUTCOMES:
        if o.code == code and not o.launch:
            return o.name
    for o in OUTCOMES:
        if o.code == code:
            return o.name
    return "error"


def table_markdown() -> str:
    """The status table as Markdown (the README's copy is checked against it)."""
    rows = ["| status | exit | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{o.name}` | {o.code} | {o.meaning} |" for o in OUTCOMES]
    return "\n".join(rows)
