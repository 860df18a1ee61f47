"""ProfileTransaction: one open -> stage -> check -> commit path for `vmcfg set/unset/edit`
(commit to the file) and `vmcfg apply` (commit to a running guest)."""

import threading

import pytest

from vmcfg import status as S
from vmcfg.profile import load_caps, load_profile, resolve_profile
from vmcfg.profile.transaction import (Conflict, ProfileTransaction, Refused,
                                       TransactionError)

BASE = '[profile]\nextends = "baseline"\n\n[primary]\nhlt_exiting = true   # kept\n'


def _file(tmp_path, text=BASE):
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def test_commit_writes_the_staged_edits_and_fills_before_after(tmp_path):
    p = _file(tmp_path)
    with ProfileTransaction.open(str(p), hold_lock=True) as tx:
        tx.set("tsc.offset", "=", "0x10")
        tx.unset("primary.hlt_exiting")
        assert p.read_text() == BASE          # nothing written before commit
        v = tx.check()
        assert v.valid and v.config.settings["tsc"]["offset"] == 0x10
        assert [(c.before, c.after) for c in tx.changes] == [(0, 0x10), (True, False)]
        assert tx.commit()
    assert "offset = 0x10" in p.read_text() and "hlt_exiting" not in p.read_text()


def test_an_invalid_result_is_refused_unless_forced_and_a_dry_run_writes_nothing(tmp_path):
    p = _file(tmp_path)
    with ProfileTransaction.open(str(p), hold_lock=True) as tx:
        tx.set("pin.virtual_nmis", "=", "on")           # needs nmi_exiting (E19)
        with pytest.raises(Refused) as e:
            tx.commit()
        assert e.value.status == S.INVALID and e.value.errors[0]["rule"] == "E19"
        assert p.read_text() == BASE
        assert not tx.commit(force=True, dry_run=True) and p.read_text() == BASE
        assert tx.commit(force=True)
    assert "virtual_nmis = true" in p.read_text()


def test_commit_never_overwrites_a_file_changed_since_it_was_opened(tmp_path):
    p = _file(tmp_path)
    with ProfileTransaction.open(str(p)) as tx:
        tx.replace(BASE + "\n[tsc]\noffset = 1\n")
        meanwhile = BASE.replace("true", "false")
        p.write_text(meanwhile)
        asked = []
        with pytest.raises(Conflict):
            tx.commit(overwrite=lambda: asked.append(1) or False)
        assert asked and p.read_text() == meanwhile
        assert tx.commit(overwrite=lambda: True)
    assert p.read_text().endswith("offset = 1\n")


def test_transactions_holding_the_lock_run_one_after_the_other(tmp_path):
    p = _file(tmp_path)
    inside = threading.Event()
    release = threading.Event()

    def first():
        with ProfileTransaction.open(str(p), hold_lock=True) as tx:
            tx.set("tsc.offset", "=", "1")
            inside.set()
            release.wait(30)
            tx.commit()

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(30)
    done = []

    def second():
        with ProfileTransaction.open(str(p), hold_lock=True) as tx:
            tx.set("vpid.id", "=", "7")
            tx.commit()
        done.append(1)

    t2 = threading.Thread(target=second)
    t2.start()
    t2.join(0.2)
    assert not done                      # waits for the lock held by the first
    release.set()
    t.join(30)
    t2.join(30)
    prof = load_profile(str(p))          # neither change was lost
    assert prof.settings["tsc"]["offset"] == 1 and prof.settings["vpid"]["id"] == 7


class FakeGuest:
    """A live target: what `vmcfg apply` commits to."""

    def __init__(self, profile="baseline"):
        prof = load_profile(profile)
        self.caps = load_caps(None, None, prof)
        self.mode = 64
        self._cfg = resolve_profile(prof, self.caps).config
        self.sent = []

    @property
    def config(self):
        return self._cfg

    def apply(self, cfg):
        self.sent.append(cfg)
        self._cfg = cfg
        return {"instructions": 1234, "tsc": 99}


def test_commit_live_hands_the_checked_config_to_the_guest(tmp_path):
    p = _file(tmp_path)
    guest = FakeGuest()
    tx = ProfileTransaction.of_profile(str(p))
    plan = tx.plan_live(guest)
    assert plan.would_apply and [d["key"] for d in plan.diff] == ["primary.hlt_exiting"]
    assert guest.sent == []              # planning sends nothing
    assert tx.commit_live(guest, plan) == {"instructions": 1234, "tsc": 99}
    assert guest.sent == [plan.config] and guest.config.on("primary.hlt_exiting")


def test_commit_live_refuses_what_a_running_guest_cannot_change(tmp_path):
    guest = FakeGuest()
    p = _file(tmp_path, BASE + '\n[guest]\nmemory = "32M"\n')
    tx = ProfileTransaction.of_profile(str(p))
    plan = tx.plan_live(guest)
    assert not plan.would_apply and [d["key"] for d in plan.refused] == ["guest.memory"]
    with pytest.raises(Refused):
        tx.commit_live(guest, plan)
    assert guest.sent == []


@pytest.mark.parametrize("text,status", [
    ("[primary]\nno_such_control = true\n", S.USAGE),               # does not load
    ('[profile]\nextends = "baseline"\n[pin]\nvirtual_nmis = true\n', S.INVALID),   # E19
])
def test_plan_live_says_why_a_profile_cannot_be_applied(tmp_path, text, status):
    guest = FakeGuest()
    tx = ProfileTransaction.of_profile(str(_file(tmp_path, text)))
    with pytest.raises(TransactionError) as e:
        tx.plan_live(guest)
    assert e.value.status == status and e.value.errors and guest.sent == []
