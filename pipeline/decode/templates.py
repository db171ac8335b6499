"""Templates (NetFlow v9 / IPFIX) and their compiled numpy record types.

A template whose fields all have fixed lengths becomes one big-endian structured dtype, so a whole
data set — or the data sets of many packets, concatenated — decodes with a single ``np.frombuffer``.
Fields Shoal maps are typed (``>u2``, ``>u4``...); everything else, enterprise IEs included, is a gap
that numpy skips by offset.

A template with variable-length fields (RFC 7011 §7) is the same with those fields cut out: its fixed
fields, packed end to end, make a fixed record (:attr:`Template.dtype`), and :attr:`Template.runs`
says how many fixed bytes come before, between and after the variable-length ones. A compiled pass
(:mod:`pipeline.decode.variable_length`) copies each record's fixed bytes into that packed form, and
from there the record decodes as a fixed one.
"""

from __future__ import annotations

import functools
import itertools
import struct
from dataclasses import dataclass, field

import numpy as np

from pipeline.decode import ies
from pipeline.decode.ies import ADDRESS_IES, DST_V4, DST_V6, MAPPED_IES, SRC_V4, SRC_V6

VARIABLE = 65535  # RFC 7011 §7: variable-length field marker
V9_SCOPE = 0xFFFFFFFF
"""Marks a NetFlow v9 options *scope* field: its type is a scope type (1 System, 2 Interface...), not an
Information Element, so it must never be mapped as one."""
_FIELD = struct.Struct("!HH")
_PEN = struct.Struct("!I")
_SAMPLER_IES = (ies.SAMPLER_ID, ies.SELECTOR_ID)
_LAYOUTS: dict[bytes, int] = {}
"""Layout (fields packed, ~8 bytes each) -> its group key (negative, so never an ``id``). Networks
send a few dozen; a spoofed flood fills it to :data:`_MAX_LAYOUTS`, then it starts over (templates
keyed before keep their keys: they only share groups less)."""
_MAX_LAYOUTS = 4_096
_LAYOUT_FIELD = struct.Struct("!IHI")
_layout_keys = itertools.count(-1, -1)


class TemplateError(ValueError):
    """A template that cannot be sound; ``reason`` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Field:
    ie: int
    length: int
    enterprise: int = 0

    @property
    def mapped(self) -> bool:
        return self.enterprise == 0 and self.ie in MAPPED_IES


@dataclass
class Template:
    template_id: int
    fields: tuple[Field, ...]
    scope_count: int = 0
    """Options templates: how many leading fields are scope fields (0 for data templates)."""
    options: bool = False
    last_seen: float = 0.0
    last_used: float = field(default=0.0, compare=False)
    """When data last came for it, 0 if none yet (the global cap evicts unused templates first, then
    the least recently used)."""
    dtype: np.dtype = field(init=False, repr=False)
    """Fixed templates: the record. Variable-length ones: the record's fixed fields packed end to end."""
    record_length: int = field(init=False, default=0)
    """Bytes per record (0 for variable-length templates: each record has its own)."""
    runs: np.ndarray | None = field(init=False, default=None, repr=False, compare=False)
    """Variable-length templates: bytes of fixed fields before the first variable-length field,
    between each two, and after the last (one more entry than variable-length fields)."""
    names: dict[int, str] = field(init=False, default_factory=dict)
    """IE -> field name in ``dtype`` (first occurrence of each mapped IE)."""
    usable: bool = field(init=False, default=False)
    """Its records can give a flow: it has a source or destination address of a known family.
    Data for a data template without one is rejected unread."""
    group_key: int = field(init=False, default=0, compare=False)
    """The decoder groups records of one call by this key, so that one decode covers every stream's
    template of the same layout (hundreds of routers send the same few): shared by templates of
    equal fields, unless a record's rate depends on its stream (sampler ids), then its own ``id``."""

    def __post_init__(self) -> None:
        self.names = {}
        self.usable = not self.options and any(
            f.mapped
            and (
                (f.ie in (SRC_V4, DST_V4) and f.length == 4) or (f.ie in (SRC_V6, DST_V6) and f.length == 16)
            )
            for f in self.fields
        )
        # Fields Shoal does not map are skipped by offset (``np.dtype`` with offsets and itemsize):
        # a named gap per field would cost ~400 bytes each, ~25 KB for a 60-field template, which
        # a flood of spoofed templates multiplies. Variable-length fields take no room at all.
        names, formats, offsets, at = [], [], [], 0
        runs, run = [], 0
        for f in self.fields:
            if f.length == VARIABLE:
                runs.append(run)
                run = 0
                continue
            if f.mapped and f.ie not in self.names:
                self.names[f.ie] = f"f{f.ie}"
                names.append(f"f{f.ie}")
                formats.append(field_dtype(f.ie, f.length))
                offsets.append(at)
            at += f.length
            run += f.length
        self.dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": at})
        if runs:
            self.runs = np.array([*runs, run], dtype=np.int64)
        else:
            self.record_length = at
        self.group_key = id(self)
        if self.usable and not any(ie in self.names for ie in _SAMPLER_IES):
            layout = b"".join(_LAYOUT_FIELD.pack(f.ie, f.length, f.enterprise) for f in self.fields)
            key = _LAYOUTS.get(layout)
            if key is None:
                if len(_LAYOUTS) >= _MAX_LAYOUTS:
                    _LAYOUTS.clear()
                key = _LAYOUTS[layout] = next(_layout_keys)
            self.group_key = key

    @property
    def variable(self) -> bool:
        return self.runs is not None

    def same_layout(self, other: Template) -> bool:
        return self.fields == other.fields and self.scope_count == other.scope_count

    def to_json(self) -> dict:
        return {
            "id": self.template_id,
            "fields": [[f.ie, f.length, f.enterprise] for f in self.fields],
            "scope_count": self.scope_count,
            "options": self.options,
            "last_seen": self.last_seen,
            "last_used": self.last_used,
        }

    @classmethod
    def from_json(cls, data: dict) -> Template:
        """A saved template, checked as a template set's would be (ValueError if it cannot be one)."""
        fields = tuple(_field(int(ie), int(n), int(pen)) for ie, n, pen in data["fields"])
        template = cls(
            int(data["id"]),
            fields,
            int(data["scope_count"]),
            bool(data["options"]),
            float(data["last_seen"]),
            float(data.get("last_used", 0.0)),
        )
        if not (
            256 <= template.template_id <= 65535
            and 1 <= len(fields) <= 65535
            and 0 <= template.scope_count <= len(fields)
            and all(
                0 <= f.ie <= 0xFFFF and 1 <= f.length <= VARIABLE and 0 <= f.enterprise <= V9_SCOPE
                for f in fields
            )
            and template.last_seen == template.last_seen  # not NaN
        ):
            raise ValueError(f"invalid saved template {data.get('id')!r}")
        return template


def field_dtype(ie: int, length: int) -> object:
    """Unsigned big-endian integers for the natural widths; raw bytes for addresses and odd
    reduced-size encodings (converted later)."""
    if ie in ADDRESS_IES:
        return ("u1", (length,))
    return {1: ">u1", 2: ">u2", 4: ">u4", 8: ">u8"}.get(length, ("u1", (length,)))


@functools.lru_cache(maxsize=65_536)
def _field(ie: int, length: int, enterprise: int) -> Field:
    """Fields are immutable: templates share them (a 60-field template then costs 60 references)."""
    return Field(ie, length, enterprise)


def parse_template_set(body: bytes, ipfix: bool, options: bool, max_fields: int) -> list[Template | int]:
    """Templates of one (options) template set. An ``int`` in the result is an IPFIX withdrawal of that
    template id (RFC 7011 §8.1: field count 0; id 2 or 3 withdraws every template of the kind)."""
    out: list[Template | int] = []
    pos, end = 0, len(body)
    while end - pos >= 4:
        if ipfix:
            tid, count = _FIELD.unpack_from(body, pos)
            pos += 4
            scope = 0
            if options and count:
                if end - pos < 2:
                    raise TemplateError("template_truncated")
                scope = struct.unpack_from("!H", body, pos)[0]
                pos += 2
            if count == 0:
                out.append(tid)
                continue
            if scope > count or (options and scope == 0):
                raise TemplateError("template_bad_scope")
        elif options:
            if end - pos < 6:
                break
            tid, scope_len, option_len = struct.unpack_from("!HHH", body, pos)
            pos += 6
            if scope_len % 4 or option_len % 4:
                raise TemplateError("template_bad_scope")
            scope, count = scope_len // 4, (scope_len + option_len) // 4
            if count == 0:
                raise TemplateError("template_bad_field_count")
        else:
            tid, count = _FIELD.unpack_from(body, pos)
            pos += 4
            scope = 0
        if tid < 256:
            raise TemplateError("template_bad_id")
        if count == 0 or count > max_fields:
            raise TemplateError("template_bad_field_count")
        fields: list[Field] = []
        for _ in range(count):
            if end - pos < 4:
                raise TemplateError("template_truncated")
            ie, length = _FIELD.unpack_from(body, pos)
            pos += 4
            pen = 0
            if ipfix and ie & 0x8000:
                if end - pos < 4:
                    raise TemplateError("template_truncated")
                pen = _PEN.unpack_from(body, pos)[0]
                pos += 4
                ie &= 0x7FFF
            if length == 0 or (length == VARIABLE and not ipfix):
                raise TemplateError("template_bad_field_length")
            if not ipfix and options and len(fields) < scope:
                pen = V9_SCOPE
            fields.append(_field(ie, length, pen))
        out.append(Template(tid, tuple(fields), scope, options))
        if not ipfix and options:
            break  # v9 options flowsets carry one template, then padding
    return out
