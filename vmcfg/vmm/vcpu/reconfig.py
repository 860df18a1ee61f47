"""Reconfiguration: the controls and VMCS fields in force, and live changes
(`vmcfg apply`) that take effect between two guest instructions."""

from __future__ import annotations

from ...vmx.config import VmxConfig
from ..apicv import VirtualApic
from ..outcome import RunEnd
from ..platform import CpuidModel
from .common import EXIT_COST, TSC_PER_INSN
from .intercepts import trapped_kinds
from .vtime import tsc_frequency


class ReconfigMixin:
    """Reconfiguration: the controls in force and live changes (see the module doc)."""

    def _set_cfg(self, cfg: VmxConfig) -> None:
        from ...vmx.table import CONTROLS
        self.cfg = cfg
        self._on = {c.path: cfg.on(c.path) for c in CONTROLS}
        on = self._on
        self._reentry = (on["pin.activate_vmx_preemption_timer"]
                         or on["primary.interrupt_window_exiting"]
                         or on["primary.nmi_window_exiting"] or on["primary.monitor_trap_flag"])

    def _load_vmcs_fields(self, cfg: VmxConfig) -> None:
        s = cfg.settings
        self.cr0_mask, self.cr0_shadow = s["cr0"]["mask"], s["cr0"]["shadow"]
        self.cr4_mask, self.cr4_shadow = s["cr4"]["mask"], s["cr4"]["shadow"]
        self.tsc_offset = s["tsc"]["offset"]
        self.tsc_multiplier = s["tsc"]["multiplier"]
        self.tsc_hz = tsc_frequency(cfg, self.machine_tsc_hz)
        self.cr3_targets = list(s["cr3"]["targets"])
        self.ptimer_value = s["preemption_timer"]["value"]
        self.ptimer_rate = 5          # IA32_VMX_MISC[4:0] of the cvmm capability set
        self._ptimer_fire: int | None = None
        # use TPR shadow and APIC virtualization: the virtual-APIC page lives in the VMM
        self.apicv = VirtualApic(cfg, read_phys=self.read_phys, write_phys=self.write_phys,
                                 memory=self.memory)
        self.apicv_pass: tuple[int, int] | None = None    # an APIC access passed on (RIP, retired)
        self.apicv_late = None                             # a trap due at the next boundary
        self._apicv_hook: int | None = None
        self.tpr_threshold = s["apic"]["tpr_threshold"]

    def _make_cpuid(self, cfg: VmxConfig) -> CpuidModel:
        return CpuidModel(cfg.settings.get("cpuid") or {},
                          rdtscp=cfg.on("secondary.enable_rdtscp"),
                          invpcid=cfg.on("secondary.enable_invpcid"),
                          tsc_per_insn=TSC_PER_INSN, exit_cost=EXIT_COST,
                          tsc_hz=tsc_frequency(cfg, self.machine_tsc_hz),
                          apic_enabled=lambda: self.platform.lapic.enabled)

    def request_apply(self, new_config: VmxConfig) -> None:
        """Swap the VmxConfig at the next instruction boundary (thread-safe).

        The run loop stops emulation before the next block, re-hooks every
        scanned page for the new trapped kinds, flushes cached translations
        and resumes.  Called from inside an exit handler, it takes effect
        before the guest resumes.
        """
        with self._cfg_lock:
            self._pending_cfg = new_config
        self._wake()
        if not self._in_hook:
            self.counter.request_stop()

    def _wake(self) -> None:
        """Wake a guest waiting in HLT for a live event (see _wait_live)."""
        with self.apply_cond:
            self.apply_cond.notify_all()

    def _wait_live(self) -> None:
        """HLT with nothing on the platform that could wake it, in a named guest:
        wait (in wall time; virtual time stands still) for a live event -- an NMI,
        an interrupt the guest can take, a configuration change or `vmcfg stop`.
        A change alone leaves the guest halted: it is applied, then HLT goes on."""
        def woken() -> bool:
            can_irq = bool(self.rflags & (1 << 9)) or self._on["pin.external_interrupt_exiting"]
            return bool(self._live_nmi or (self._live_irqs and can_irq) or
                        self._end_request is not None or self._pending_cfg is not None or
                        self.platform.serial.input_waiting)
        self.halted = True
        try:
            with self.apply_cond:
                self.apply_cond.wait_for(woken)
        finally:
            self.halted = False
        if self._end_request is not None:
            raise RunEnd(self._end_request[0], None, self._end_request[1])
        if not (self._live_nmi or self._live_irqs):
            self._rehalt = True          # only a change: apply it, then keep halting

    def request_end(self, status: str, message: str) -> None:
        """End the run at the next instruction boundary (thread-safe): `vmcfg stop`."""
        self._end_request = (status, message)
        with self._cfg_lock:             # take the same path as a live apply
            if self._pending_cfg is None:
                self._pending_cfg = self.cfg
        self._wake()
        if not self._in_hook:
            self.counter.request_stop()

    def _apply_pending(self) -> bool:
        if self._end_request is not None:
            raise RunEnd(self._end_request[0], None, self._end_request[1])
        with self._cfg_lock:
            cfg, self._pending_cfg = self._pending_cfg, None
        if cfg is None:
            return False
        old = self.cfg
        self._set_cfg(cfg)
        s_old, s_new = old.settings, cfg.settings
        for table, attr in (("cr0", "cr0"), ("cr4", "cr4")):
            if s_old[table] != s_new[table]:
                setattr(self, f"{attr}_mask", s_new[table]["mask"])
                setattr(self, f"{attr}_shadow", s_new[table]["shadow"])
        if s_old["tsc"] != s_new["tsc"]:
            self.tsc_offset, self.tsc_multiplier = s_new["tsc"]["offset"], s_new["tsc"]["multiplier"]
        if s_old["cr3"] != s_new["cr3"]:
            self.cr3_targets = list(s_new["cr3"]["targets"])
        if s_old["preemption_timer"] != s_new["preemption_timer"]:
            self.ptimer_value = s_new["preemption_timer"]["value"]
        self.tpr_threshold = s_new["apic"]["tpr_threshold"]
        self.apicv.configure(cfg, old=s_old)
        self._apicv_attach()
        if s_old.get("cpuid") != s_new.get("cpuid") or \
                old.on("secondary.enable_rdtscp") != cfg.on("secondary.enable_rdtscp") or \
                old.on("secondary.enable_invpcid") != cfg.on("secondary.enable_invpcid"):
            self.cpuid = self._make_cpuid(cfg)
            self.fx.cpuid_clear()
        self._fx_configure()
        trapped = trapped_kinds(cfg) | self._extra_trap
        if trapped != self._trapped:
            self._trapped = trapped
            self._rehook_all()
        with self.apply_cond:
            self.apply_seq += 1
            self.applied_at = (self.icount, self.tsc)
            self.apply_cond.notify_all()
        return True
