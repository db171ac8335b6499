"""The templates every export stream has announced: kept, refreshed, withdrawn, expired, capped.

Templates live until withdrawn (IPFIX field count 0) or not refreshed for ``template_ttl_seconds``:
routers resend them only every few minutes, and dropping them early loses data (goflow2 #330). One
stream is capped at ``max_templates_per_exporter`` (its flood refuses its own templates, no one
else's); all streams at ``max_templates``, beyond which templates no data used go first, then the
least recently used, so a router whose data keeps coming keeps its templates.
"""

from __future__ import annotations

from pipeline.decode.datagram import DecoderConfig
from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import TemplateKey
from pipeline.decode.templates import Template

UNUSED_SAVED = 1_024
"""Templates no data has used yet that :meth:`TemplateStore.to_state` keeps (the most recent)."""
_MAX_KNOWN_SETS = 65_536


class TemplateStore:
    def __init__(self, config: DecoderConfig, stats: DecoderStats) -> None:
        self.config = config
        self.stats = stats
        self.tables: dict[TemplateKey, dict[int, Template]] = {}
        """Per stream: template id -> template."""
        self.total = 0
        self.known_sets: dict[TemplateKey, tuple[bytes, tuple[tuple[int, Template], ...]]] = {}
        """Last fully applied template set of each stream (its body), and the templates it gave: the
        block path recognises a repeat of it byte for byte."""

    def add(self, tkey: TemplateKey, template: Template) -> bool:
        """Keep ``template`` for its stream (False: refused by the stream's cap, counted). The same
        layout again only refreshes the kept one."""
        exporter = tkey[0]
        table = self.tables.get(tkey)
        old = table.get(template.template_id) if table is not None else None
        if old is not None and old.same_layout(template):
            old.last_seen = max(old.last_seen, template.last_seen)
            return True
        if old is None:
            if table is not None and len(table) >= self.config.max_templates_per_exporter:
                self.stats.error(exporter, "template_limit")
                return False
            if self.total >= self.config.max_templates:
                self._evict()
            self.total += 1
            active = self.stats.templates_active
            active[exporter] = active.get(exporter, 0) + 1
        self.tables.setdefault(tkey, {})[template.template_id] = template
        return True

    def remember_set(self, tkey: TemplateKey, body: bytes, template_ids: list[int]) -> None:
        """A plain template set took full effect: remember it, so that its repeats are cheap."""
        if len(self.known_sets) > _MAX_KNOWN_SETS:
            self.known_sets.clear()
        table = self.tables.get(tkey, {})
        if all(tid in table for tid in template_ids):
            self.known_sets[tkey] = (body, tuple((tid, table[tid]) for tid in template_ids))

    def withdraw(self, tkey: TemplateKey, template_id: int, options: bool) -> None:
        """IPFIX withdrawal (RFC 7011 §8.1): one template, or with id 2 or 3 all (options) ones."""
        table = self.tables.get(tkey, {})
        if template_id in (2, 3):
            for tid in [t for t, tpl in table.items() if tpl.options == options]:
                self.remove(tkey, tid)
        elif template_id in table:
            self.remove(tkey, template_id)
        else:
            self.stats.error(tkey[0], "withdrawal_unknown_template")

    def remove(self, tkey: TemplateKey, template_id: int) -> None:
        table = self.tables[tkey]
        del table[template_id]
        if not table:
            del self.tables[tkey]
            self.known_sets.pop(tkey, None)
        self.total -= 1
        active = self.stats.templates_active
        active[tkey[0]] -= 1
        if not active[tkey[0]] and len(active) > self.config.max_stat_exporters:
            del active[tkey[0]]  # the gauge shows 0 for a while, but spoofed sources do not pile up

    def expire(self, now: float) -> None:
        """Forget templates not refreshed within the TTL."""
        ttl = self.config.template_ttl_seconds
        for tkey, table in list(self.tables.items()):
            for tid, tpl in list(table.items()):
                if now - tpl.last_seen > ttl:
                    self.remove(tkey, tid)

    def _evict(self) -> None:
        """Make room under ``max_templates``: drop a sixteenth, templates no data ever used first
        (what a spoofed template flood leaves), then the least recently used by data; one sort per
        many templates, not a scan each."""
        every = sorted(
            (
                (t.last_used, t.last_seen, tkey, tid)
                for tkey, table in self.tables.items()
                for tid, t in table.items()
            ),
            key=lambda item: (item[0], item[1]),
        )
        target = max(1, self.config.max_templates // 16)
        for _, _, tkey, tid in every[: max(target, self.total - self.config.max_templates + 1)]:
            self.remove(tkey, tid)
            self.stats.evictions["templates"] += 1

    def to_state(self) -> list[dict]:
        """Templates data used, all of them; of those no data used yet (a template-only capture file,
        or a spoofed flood) only the ``UNUSED_SAVED`` last seen, so a flood does not slow a restart."""
        every = [(k, t) for k, table in self.tables.items() for t in table.values()]
        unused = sorted(
            (item for item in every if not item[1].last_used), key=lambda item: -item[1].last_seen
        )
        kept = [item for item in every if item[1].last_used] + unused[:UNUSED_SAVED]
        return [{"key": list(k), "template": t.to_json()} for k, t in kept]

    def load_state(self, items: list) -> int:
        """Restore saved templates, each checked as a template set's would be, within the same caps;
        returns how many were skipped."""
        skipped = 0
        for item in items:
            try:
                exporter, port, domain, version = item["key"]
                tkey = (str(exporter), int(port), int(domain), int(version))
                self.add(tkey, Template.from_json(item["template"]))
            except (TypeError, ValueError, KeyError):
                skipped += 1
        return skipped
