"""The architectural CPU on top of Unicorn: what the SDM says the processor does without VMX.

* ``state``    -- the emulated CPU's hidden state (segment descriptor caches, CPL,
                  the current mode) read and written through one context round trip;
* ``delivery`` -- exception and interrupt delivery through the real-mode IVT and the
                  protected-/long-mode IDT (gates, CPL change, TSS stack switch, IST),
                  #DF and triple fault;
* ``paging``   -- guest-linear to guest-physical translation (the guest's page tables).
"""
