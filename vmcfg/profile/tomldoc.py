"""Format-preserving changes to a tomlkit document: find or make a table, set a key in place
(keeping its comment and spacing), uncomment a `# key = ...` placeholder, insert a new key
after the table's last one, and find the spellings of a control in a table."""

from __future__ import annotations

import re
from collections.abc import MutableMapping

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Comment, Null, Table, Whitespace

from ..vmx.table import Control, resolve_control
from .values import EditError
from .writer import toml_key


def toml_item(lit: str):
    return tomlkit.parse(f"v = {lit}\n").item("v")


PLACEHOLDER = re.compile(r"^\s*#\s*(?P<key>[A-Za-z0-9_\-\"']+)\s*=")


def container(tbl):
    return tbl.value if isinstance(tbl, Table) else None


def get_table(doc, name: str):
    """doc[name] if it is a table, None if absent; EditError if it is something else."""
    if name not in doc:
        return None
    t = doc[name]
    if not isinstance(t, MutableMapping):
        raise EditError(f"{name!r} in the file is not a table (expected [{name}])")
    return t


def ensure_table(doc, name: str, *, super_table: bool = False):
    t = get_table(doc, name)
    if t is not None:
        return t
    s = doc.as_string()
    if s and not s.endswith("\n\n"):
        doc.add(tomlkit.nl())
        if not s.endswith("\n"):
            doc.add(tomlkit.nl())
    t = tomlkit.table(is_super_table=super_table)
    doc.append(name, t)
    return doc[name]


def insert_key(tbl, key: str, lit: str, placeholder_keys: tuple[str, ...] = ()) -> str:
    """Add key = lit to tbl: in place of a commented-out `# key = ...` line if there is
    one, else after the table's last key.  Returns how it was placed."""
    c = container(tbl)
    item = toml_item(lit)
    if c is None:            # inline table or super-table proxy: let tomlkit place it
        tbl[key] = item
        return "added"
    body = c.body
    names = set(placeholder_keys) | {key}
    for i, (k, it) in enumerate(body):
        if k is None and isinstance(it, Comment):
            m = PLACEHOLDER.match(it.as_string())
            if m and m.group("key").strip("\"'") in names:
                line = it.as_string().lstrip()
                code = line[1:].lstrip() if line.startswith("#") else line
                try:
                    parsed = tomlkit.parse(code if code.endswith("\n") else code + "\n")
                    pk = next(iter(parsed))
                    new = parsed.item(pk)
                    new = with_value(new, lit)
                    indent = it.as_string()[:len(it.as_string()) - len(line)]
                    new.trivia.indent = indent
                    if new.trivia.comment:
                        # keep the trailing comment in the column it was in
                        orig = it.as_string().rstrip("\n")
                        col = orig.rfind(new.trivia.comment)
                        prefix = len(f"{indent}{toml_key(key)} = {lit}")
                        new.trivia.comment_ws = " " * max(2, col - prefix)
                except (TOMLKitError, StopIteration):
                    new = item
                if i + 1 < len(body):
                    c._insert_at(i, key, new)
                    body[i + 1] = (None, Null())
                else:
                    body[i] = (None, Null())
                    c.append(key, new)
                return "uncommented"
    last_kv = None
    last_ph = None
    for i, (k, it) in enumerate(body):
        if k is not None and not isinstance(it, (Table,)) and not getattr(it, "is_table", lambda: False)():
            last_kv = i
        elif k is None and isinstance(it, Comment) and PLACEHOLDER.match(it.as_string()):
            last_ph = i
    idx = last_kv if last_kv is not None else last_ph
    pos = 0 if idx is None else idx + 1
    if pos < len(body):
        c._insert_at(pos, key, item)
    else:
        if body and isinstance(body[-1][1], Whitespace):
            c._insert_at(len(body) - 1, key, item)
        else:
            c.append(key, item)
    return "added"


def with_value(old_item, lit: str):
    new = toml_item(lit)
    new.trivia.indent = old_item.trivia.indent
    new.trivia.comment_ws = old_item.trivia.comment_ws
    new.trivia.comment = old_item.trivia.comment
    new.trivia.trail = old_item.trivia.trail
    return new


def set_existing(tbl, key: str, lit: str) -> None:
    c = container(tbl)
    if c is None:
        tbl[key] = toml_item(lit)
        return
    old = c.item(key)
    tbl[key] = with_value(old, lit)


def keys_for_control(tbl, ctl: Control) -> list[tuple[str, bool]]:
    """Spellings in tbl that name ctl: [(key as written, inverted)]."""
    out = []
    for k in list(tbl.keys()):
        for c, inv in resolve_control(str(k), ctl.field):
            if c is ctl:
                out.append((str(k), inv))
    return out
