"""A 16550A UART: COM1 at I/O 0x3F8-0x3FF on IRQ 4.

Registers: RBR/THR (DLL with LCR.DLAB), IER (DLM), IIR/FCR, LCR, MCR, LSR, MSR,
SCR.  A byte written to THR goes to the console at once, so the transmitter
is always empty again by the next access; with IER bit 1 that raises the
"THR empty" interrupt (also when IER bit 1 is set while THR is empty), which
reading IIR or writing THR clears.  Received bytes come from an input queue
the launcher feeds (`feed`, thread-safe); they move into the receive FIFO
(16 bytes with FCR bit 0, else one) at the next instruction boundary, set
LSR.DR and, with IER bit 0, raise the "received data" interrupt.  A byte
arriving with the FIFO full sets LSR.OE.  MCR bit 4 (loopback) sends THR to
the receiver and MCR's outputs to MSR's inputs.  IIR reports the
highest-priority source: line status > received data > THR empty > modem
status.  The IRQ line follows "some enabled source is pending" (as QEMU's
serial device does; OUT2 does not gate it).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable
from .misc import Cell

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 1, 2, 4, 8
LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40
IIR_NONE, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI = 0x01, 0x00, 0x02, 0x04, 0x06


class Uart:
    def __init__(self, irq: Callable[[bool], None] = lambda level: None,
                 sink: Callable[[str], None] | None = None):
        self._irq = irq
        self.sink = sink
        self.out = bytearray()
        self.ier = 0
        self.lcr = 0x03
        self.mcr = 0
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = 0xB0              # CTS, DSR, DCD
        self.scr_cell = Cell()       # SCR: a plain latch (see misc.Cell)
        self.dll, self.dlm = 0x0C, 0   # 9600 baud
        self.fcr = 0
        self.rx: deque[int] = deque()
        self.thr_ipending = False
        self._input: deque[int] = deque()
        self._lock = threading.Lock()
        self.notify: Callable[[], None] = lambda: None   # set by the machine: wake the CPU
        self._level = False

    @property
    def scr(self) -> int:
        return self.scr_cell.value

    @scr.setter
    def scr(self, v: int) -> None:
        self.scr_cell.value = v

    def latches(self, base: int) -> list[tuple[int, str, int, bool]]:
        """(port, cell attribute, bits a byte write keeps, reads return the cell)."""
        return [(base + 7, "scr_cell", 0xFF, True)]

    @property
    def text(self) -> str:
        return self.out.decode("latin-1")

    # ---- the receive path ---------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Queue bytes for the guest to receive (any thread)."""
        with self._lock:
            self._input.extend(data)
        self.notify()

    @property
    def input_waiting(self) -> bool:
        return bool(self._input) and len(self.rx) < self._fifo_size

    @property
    def _fifo_size(self) -> int:
        return 16 if self.fcr & 1 else 1

    def service(self) -> None:
        """Move queued input into the receive FIFO (at an instruction boundary)."""
        if not self._input:
            return
        with self._lock:
            while self._input and len(self.rx) < self._fifo_size:
                self.rx.append(self._input.popleft())
        self._update()

    def _receive(self, b: int) -> None:
        if len(self.rx) >= self._fifo_size:
            self.lsr |= LSR_OE
        else:
            self.rx.append(b)

    # ---- interrupts --------------------------------------------------------------------
    def iir_source(self) -> int:
        if self.ier & IER_RLSI and self.lsr & LSR_OE:
            return IIR_RLSI
        if self.ier & IER_RDI and self.rx:
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if self.ier & IER_MSI and self.msr & 0x0F:
            return IIR_MSI
        return IIR_NONE

    def _update(self) -> None:
        level = self.iir_source() != IIR_NONE
        if level != self._level:
            self._level = level
            self._irq(level)

    # ---- registers ---------------------------------------------------------------------
    def _lsr(self) -> int:
        return self.lsr | (LSR_DR if self.rx else 0)

    def io_read(self, port: int, size: int) -> int:
        off = port & 7
        dlab = self.lcr & 0x80
        if off == 0:
            if dlab:
                return self.dll
            v = self.rx.popleft() if self.rx else 0
            self.service()
            self._update()
            return v
        if off == 1:
            return self.dlm if dlab else self.ier
        if off == 2:
            src = self.iir_source()
            if src == IIR_THRI:
                self.thr_ipending = False
                self._update()
            return src | (0xC0 if self.fcr & 1 else 0)
        if off == 3:
            return self.lcr
        if off == 4:
            return self.mcr
        if off == 5:
            v = self._lsr()
            self.lsr &= ~LSR_OE
            self._update()
            return v
        if off == 6:
            if self.mcr & 0x10:               # loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
                m = self.mcr
                return ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
            v = self.msr
            self.msr &= 0xF0                  # reading clears the delta bits
            self._update()
            return v
        return self.scr

    def io_write(self, port: int, size: int, value: int) -> None:
        off = port & 7
        value &= 0xFF
        dlab = self.lcr & 0x80
        if off == 0:
            if dlab:
                self.dll = value
                return
            if self.mcr & 0x10:
                self._receive(value)
            else:
                self.out.append(value)
                if self.sink is not None:
                    self.sink(chr(value))
            self.thr_ipending = True           # sent at once: THR is empty again
            self._update()
            return
        if off == 1:
            if dlab:
                self.dlm = value
                return
            was = self.ier
            self.ier = value & 0x0F
            if self.ier & IER_THRI and not was & IER_THRI:
                self.thr_ipending = True       # the 16550 raises THRE when it is enabled
            self._update()
            return
        if off == 2:
            if value & 2:
                self.rx.clear()
            self.fcr = value & 0xC9
            self.service()
            self._update()
            return
        if off == 3:
            self.lcr = value
        elif off == 4:
            self.mcr = value & 0x1F
        elif off == 7:
            self.scr = value
