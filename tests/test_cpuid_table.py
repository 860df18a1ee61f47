"""The profile's [cpuid] table: validation with positions, the JSON Schema, and what a guest
executing CPUID sees."""

from __future__ import annotations

import json
import re

import pytest

HEAD = '[profile]\nname = "cpuid-test"\nextends = "baseline"\n'


def _profile(tmp_path, body: str) -> str:
    p = tmp_path / "p.toml"
    p.write_text(HEAD + body)
    return str(p)


@pytest.mark.parametrize("body, where, words", [
    ('[cpuid."0x1"]\necx = 0x1_0000_0000\n', "5:1", ["cpuid.\"0x1\".ecx", "0x100000000",
                                                      "0..0xffffffff"]),
    ('[cpuid."0x1"]\necx = "lots"\n', "5:1", ["expected an integer", "0..0xffffffff"]),
    ('[cpuid."0x7.0"]\nesi = 3\n', "5:1", ["unknown register 'esi'", "eax, ebx, ecx, edx"]),
    ('[cpuid."leaf1"]\neax = 1\n', "4:2", ["'leaf1' is not a leaf number", '"0x7.0"']),
    ('[cpuid."0x1.2.3"]\neax = 1\n', "4:2", ["not a leaf number"]),
    ('[cpuid."0x1_0000_0000"]\neax = 1\n', "4:2", ["does not fit in 32 bits"]),
    ('[cpuid]\n"0x1" = 5\n', "5:1", ["must be a table of registers", '[cpuid."0x1"] ecx =']),
    ('[cpuid."1"]\neax = 1\n[cpuid."0x1"]\nebx = 2\n', "6:2", ["same leaf as '1'",
                                                               "merge the two tables"]),
])
def test_validate_reports_a_bad_cpuid_table_at_its_key(tmp_path, cli, body, where, words):
    path = _profile(tmp_path, body)
    r = cli("validate", path)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"{path}:{where}: "), r.stderr
    for w in words:
        assert w in r.stderr
    assert "Traceback" not in r.stderr


def test_a_good_cpuid_table_validates_and_a_child_keeps_the_parents_registers(tmp_path, cli):
    parent = tmp_path / "parent.toml"
    parent.write_text('[profile]\nname = "parent"\nextends = "baseline"\n'
                      '[cpuid."0x1"]\necx = 0x80000000\n')
    child = tmp_path / "child.toml"
    child.write_text('[profile]\nname = "child"\nextends = "parent.toml"\n'
                     '[cpuid."1"]\nebx = 0x42\n')
    assert cli("validate", str(child)).exit_code == 0
    from vmcfg.profile.loader import load_profile
    prof = load_profile(str(child))
    assert prof.settings["cpuid"]["*"]["0x1"] == {"ecx": 0x80000000, "ebx": 0x42}


def test_schema_describes_the_cpuid_table(cli):
    r = cli("schema")
    assert r.exit_code == 0
    cpuid = json.loads(r.stdout)["properties"]["cpuid"]
    names = re.compile(cpuid["propertyNames"]["pattern"])
    assert names.match("0x1") and names.match("0x7.0") and names.match("7")
    assert not names.match("leaf1") and not names.match("0x1.2.3")
    regs = cpuid["additionalProperties"]
    assert regs["additionalProperties"] is False
    assert set(regs["properties"]) == {"eax", "ebx", "ecx", "edx"}
    assert all(v["minimum"] == 0 and v["maximum"] == 0xFFFFFFFF
               for v in regs["properties"].values())


# The guest checks what CPUID answers; each passed check sets one bit of the exit code.
CPUID_GUEST = """BITS 64
xor esi, esi
mov eax, 1
xor ecx, ecx
cpuid
cmp ecx, 0x80000000          ; 1: the overridden register, exactly as written
jne .c2
or esi, 1
.c2:
cmp eax, 0x00050654          ; 2: the model's signature and APIC bit stay
jne .c3
bt edx, 9
jnc .c3
or esi, 2
.c3:
mov eax, 7
xor ecx, ecx
cpuid
cmp ebx, 0x5                 ; 4: leaf 7 subleaf 0
jne .c4
or esi, 4
.c4:
mov eax, 7
mov ecx, 1
cpuid
test ebx, ebx                ; 8: subleaf 1 is not overridden
jnz .c5
or esi, 8
.c5:
mov eax, 0x40000000
cpuid
cmp eax, 0x40000002          ; 16: the hypervisor range grows to the new leaf
jne .c6
mov eax, 0x40000002
cpuid
cmp edx, 0x1234
jne .c6
or esi, 16
.c6:
mov eax, esi
out 0xf4, al
hlt
"""


def test_a_guest_executing_cpuid_sees_the_override(tmp_path, cli):
    path = _profile(tmp_path, '[cpuid."0x1"]\necx = 0x80000000\n'
                              '[cpuid."0x7.0"]\nebx = 5\n'
                              '[cpuid."0x40000002"]\nedx = 0x1234\n')
    g = tmp_path / "cpuid.asm"
    g.write_text(CPUID_GUEST)
    r = cli("launch", path, "--guest", str(g), "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == "debug-exit", doc["message"]
    assert doc["guest_exit_code"] == 31
    # the same guest under the plain model fails the override checks
    r = cli("launch", "baseline", "--guest", str(g), "--json")
    assert json.loads(r.stdout)["guest_exit_code"] == 2 | 8
