"""The app's "Duplicates", "Clusters" and "Map" tabs, built from an opened SearchIndex.

Everything is computed on first use of a tab (not at start-up) through
:class:`explore.Explorer`, so it is cached next to the index (per generation) and a restart
shows it at once. :class:`ExploreViews` holds the logic (gallery items, captions, the map's
HTML) without Gradio events, :func:`add_explore_tabs` the layout and wiring; ``instdisc/web/ui.py``
calls it inside its ``gr.Blocks``.

Clicking a group, a cluster, a member or a map point shows that image's nearest neighbours
in the tab itself (by its stored vector: nothing is re-embedded). So the tabs score with the index's
own vectors (``--embedding index``); the native copy embedding is the command line's.
"""

from __future__ import annotations

import html
import tempfile
import threading
from pathlib import Path

import gradio as gr
import numpy as np

from instdisc.explore import ExploreError, Explorer
from instdisc.explore.embeddings import INDEX
from instdisc.explore.explorer import PIXEL_AUTO, Duplicates, parse_threshold
from instdisc.explore.keep import review, suggest
from instdisc.explore.pixelcheck import Band
from instdisc.explore.reports import duplicates_csv, group_members
from instdisc.explore.sheets import palette, thumbnail
from instdisc.explore.similar import AUTO, OFF, SIMILAR

TILE = 128  # gallery thumbnail, px
GROUPS_SHOWN = 60  # groups in the Duplicates gallery (largest first)
MEMBERS_SHOWN = 60
NEIGHBOURS = 12
MAP_POINTS = 2000  # points drawn on the interactive map (a seeded sample above this)
MAP_SIZE = 640  # px

MAP_JS = """
// runs once, when the page loads, before the map is drawn (and the map is redrawn on every colour change):
// look the tooltip up at each event, never hold on to the first render's nodes
const tipOf = () => element.querySelector('.map-tip');
element.addEventListener('mouseover', (e) => {
  const c = e.target.closest('circle');
  const tip = tipOf();
  if (!c || !tip) return;
  tip.querySelector('img').src = c.dataset.src;
  tip.querySelector('span').textContent = c.dataset.caption;
  tip.style.left = (Number(c.getAttribute('cx')) + 12) + 'px';
  tip.style.top = (Number(c.getAttribute('cy')) + 12) + 'px';
  tip.style.display = 'block';
});
element.addEventListener('mouseout', (e) => {
  const tip = tipOf();
  if (tip && e.target.closest('circle')) tip.style.display = 'none';
});
element.addEventListener('click', (e) => {
  const c = e.target.closest('circle');
  if (c) trigger('click', {id: Number(c.dataset.id)});
});
"""
MAP_CSS = """
.map-wrap { position: relative; width: SIDEpx; height: SIDEpx; }
.map-wrap circle { cursor: pointer; }
.map-tip { display: none; position: absolute; background: white; border: 1px solid rgb(136, 136, 136); padding: 3px;
           pointer-events: none; font-size: 11px; z-index: 10; }
.map-tip img { width: 96px; height: 96px; image-rendering: pixelated; object-fit: contain; display: block; }
""".replace("SIDE", str(MAP_SIZE))


def similar_request(value: float | str | None) -> float | str:
    """The Similar box's value as :meth:`Explorer.duplicates` takes it: empty is 'auto', 0 is 'off'."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return AUTO
    if isinstance(value, (int, float)) and value == 0:
        return OFF
    return value


class ExploreViews:
    """What the three tabs show, as plain data (testable without a browser)."""

    def __init__(self, si, explorer: Explorer | None = None) -> None:
        self.si = si
        self._explorer = explorer
        self._lock = threading.RLock()  # each job is computed once, not once per concurrent click
        self._csv_dir = Path(tempfile.mkdtemp(prefix="explore-csv-"))
        self._pixel_band: Band | None = None  # the pixel check's band from the last ``auto`` (explore/pixelcheck.py)

    @property
    def explorer(self) -> Explorer:
        with self._lock:
            if self._explorer is None:
                self._explorer = Explorer.for_index(self.si, embedding=INDEX)
            return self._explorer

    def _item(self, row: int, caption: str) -> tuple:
        return thumbnail(self.explorer.collection.load_image(row), TILE), caption

    # ---------------------------------------------------------------- duplicates

    def duplicates(self, threshold: float | str = "auto", similar: float | str | None = AUTO) -> Duplicates:
        with self._lock:
            # a number from the slider keeps the pixel check band that the last ``auto`` calibrated
            band = self._pixel_band if parse_threshold(threshold) != "auto" and self._pixel_band else PIXEL_AUTO
            dup = self.explorer.duplicates(threshold, similar=similar_request(similar), pixel_check=band)
            if dup.calibration is not None and dup.calibration.pixel_band() is not None:
                self._pixel_band = dup.calibration.pixel_band()
            return dup

    def duplicate_view(self, threshold: float | str = "auto", similar: float | str | None = AUTO
                       ) -> tuple[float, list, str, str]:
        """(threshold, group gallery items, summary, CSV path) at ``threshold`` and similar threshold ``similar``."""
        dup = self.duplicates(threshold, similar)
        coll = self.explorer.collection
        members = group_members(coll, dup)
        csv_path = self._csv_dir / f"duplicates-{dup.threshold:.4f}-{dup.similar.threshold or 0:.4f}.csv"
        csv_path.write_text(duplicates_csv(dup, members), encoding="utf-8")
        items = [self._item(ms[0].row, f"group {i} · {g.tier} · {len(ms)} images · {g.mean_score:.3f}")
                 for i, (g, ms) in enumerate(zip(dup.all_groups[:GROUPS_SHOWN], members, strict=False))]
        tiers = dup.tier_counts()
        sim = tiers[SIMILAR]
        similar_words = (f"{sim.groups} similar-shot ({sim.images} images, to review) from {sim.threshold:.4f} "
                         f"({dup.similar.chosen_by})" if sim.threshold is not None
                         else f"no similar shots ({dup.similar.chosen_by})")
        summary = (f"**{len(dup.all_groups)} groups**, {dup.images_in_groups} images, "
                   f"{tiers['exact'].files_to_remove + tiers['near'].files_to_remove} suggested for removal: "
                   f"{tiers['exact'].groups} exact (same bytes or pixels), {tiers['near'].groups} near-duplicate "
                   f"at threshold {dup.threshold:.4f} (chain guard {dup.guard:.3f}), {similar_words}.")
        if dup.calibration is not None:
            summary += f" {dup.calibration.summary()}."
        if dup.expectation():
            summary += f" {dup.expectation()[0].upper()}{dup.expectation()[1:]}."
        if len(dup.all_groups) > GROUPS_SHOWN:
            summary += f" The gallery shows the {GROUPS_SHOWN} first; the CSV has all."
        return dup.threshold, items, summary, str(csv_path)

    def group_view(self, threshold: float, group: int, similar: float | str | None = AUTO
                   ) -> tuple[list, list[int]]:
        """A group's members (duplicates: the one to keep first; similar shots: all to review) and their ids."""
        dup = self.duplicates(threshold, similar)
        if not 0 <= group < len(dup.all_groups):
            raise ExploreError(f"no group {group} at threshold {threshold}")
        g = dup.all_groups[group]
        coll = self.explorer.collection
        ms = (review(coll, g.rows) if g.tier == SIMILAR else suggest(coll, g.rows))[:MEMBERS_SHOWN]
        sizes = [f"{m.width}x{m.height}" if m.width else "?" for m in ms]
        return ([self._item(m.row, f"{m.action} · {s} · {m.score_to_kept:.3f} · {Path(m.path).name}")
                 for m, s in zip(ms, sizes, strict=True)], [m.id for m in ms])

    # ---------------------------------------------------------------- clusters

    def cluster_view(self) -> tuple[list, str]:
        with self._lock:
            c = self.explorer.clusters()
        items = []
        for i, central in enumerate(c.central):
            maj = c.majority[i] if i < len(c.majority) else None
            items.append(self._item(central[0], f"cluster {i} · {c.sizes[i]} images"
                                    + (f" · {maj[1]:.0%} {maj[0]}" if maj else "")))
        agree = (f" Against the labels: purity {c.purity:.3f}, NMI {c.nmi:.3f} ({c.labelled} labelled images)."
                 if c.purity is not None else "")
        head = f"**{c.k} clusters** (k chosen by {c.chosen_by}), largest {c.sizes[0]}, smallest {c.sizes[-1]}."
        return items, head + agree

    def cluster_members(self, cluster_no: int) -> tuple[list, list[int]]:
        """A cluster's members, most central first."""
        c = self.explorer.clusters()
        if not 0 <= cluster_no < c.k:
            raise ExploreError(f"no cluster {cluster_no}")
        coll = self.explorer.collection
        rows = np.flatnonzero(c.assignment == cluster_no)
        sim = coll.vectors[rows] @ c.centroids[cluster_no]
        rows = rows[np.argsort(-sim, kind="stable")][:MEMBERS_SHOWN].tolist()
        return ([self._item(r, f"{coll.labels[r] or ''} · {Path(coll.paths[r]).name}") for r in rows],
                [int(coll.ids[r]) for r in rows])

    # ---------------------------------------------------------------- neighbours and map

    def neighbours(self, id: int) -> tuple[list, str]:
        """The nearest neighbours of entry ``id`` by its stored vector."""
        v = self.si.vectors([int(id)])
        hits = self.si.search_vectors(v, NEIGHBOURS + 1)[0]
        coll = self.explorer.collection
        row_of = {int(i): r for r, i in enumerate(coll.ids.tolist())}
        items = [self._item(row_of[h.id], f"{h.score:.3f} · {h.label or ''} · {Path(h.path).name}")
                 for h in hits if h.id in row_of]
        return items, f"Nearest neighbours of {coll.paths[row_of[int(id)]]}"

    def map_html(self, colour_by: str = "cluster") -> str:
        """An SVG of (a sample of) the PCA map; hover shows the thumbnail, click searches."""
        with self._lock:
            ex = self.explorer
            proj, c, coll = ex.map(), ex.clusters(), ex.collection
        rows = proj.rows
        pick = np.arange(len(rows))
        if len(rows) > MAP_POINTS:
            pick = np.sort(np.random.default_rng(0).choice(len(rows), MAP_POINTS, replace=False))
        xy = proj.xy[pick]
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        pos = 10 + (xy - lo) / np.where(hi > lo, hi - lo, 1) * (MAP_SIZE - 20)
        if colour_by == "label" and coll.has_labels():
            names = sorted({x for x in coll.labels if x is not None})
            key = [names.index(coll.labels[int(rows[i])]) if coll.labels[int(rows[i])] else len(names) for i in pick]
        else:
            key = c.assignment[rows[pick]].tolist()
        colours = palette(max(key) + 1)
        dots = []
        for (x, y), i, k in zip(pos, pick.tolist(), key, strict=True):
            r = int(rows[i])
            src = html.escape(f"gradio_api/file={coll.file_path(r)}", quote=True)
            cap = html.escape(f"{coll.labels[r] or ''} {Path(coll.paths[r]).name} (cluster {int(c.assignment[r])})",
                              quote=True)
            col = "#{:02x}{:02x}{:02x}".format(*colours[k])
            dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{col}" data-id="{int(coll.ids[r])}" '
                        f'data-src="{src}" data-caption="{cap}"/>')
        return (f'<div class="map-wrap"><svg width="{MAP_SIZE}" height="{MAP_SIZE}">{"".join(dots)}</svg>'
                f'<div class="map-tip"><img alt="thumbnail"/><span></span></div></div>')


def add_explore_tabs(si, explorer: Explorer | None = None) -> ExploreViews:
    """The three tabs, inside the caller's ``gr.Blocks``; returns their views."""
    v = ExploreViews(si, explorer)
    gallery = dict(columns=6, height=420, allow_preview=False, interactive=False, format="png",
                   object_fit="contain")

    def warn(e: ExploreError):
        gr.Warning(str(e))
        return f"Could not explore this index: {e}"

    with gr.Tab("Duplicates") as dup_tab:
        dup_summary = gr.Markdown("Open this tab to find the duplicate groups.", elem_id="dup-summary")
        with gr.Row():
            threshold = gr.Slider(0.0, 1.0, value=0.95, step=0.0025, label="Threshold (cosine similarity)",
                                  elem_id="dup-threshold")
            similar = gr.Number(None, label="Similar shots from (cosine; empty: auto, 0: off)", placeholder=AUTO,
                                minimum=0.0, maximum=1.0, step=0.0025, elem_id="dup-similar")
            csv_file = gr.DownloadButton("Download duplicates.csv", value=None, elem_id="dup-csv")
        groups = gr.Gallery(label="Groups — click one to see its files", elem_id="dup-groups", **gallery)
        group_files = gr.Gallery(label="Files of the group (the one to keep first)", elem_id="dup-members",
                                 **gallery)
        dup_ids = gr.State([])

    with gr.Tab("Clusters") as clu_tab:
        clu_summary = gr.Markdown("Open this tab to cluster the collection.", elem_id="clu-summary")
        clusters = gr.Gallery(label="Clusters — click one to see its members", elem_id="clu-grid", **gallery)
        members = gr.Gallery(label="Members (most central first) — click one to search", elem_id="clu-members",
                             **gallery)
        member_ids = gr.State([])
        clu_status = gr.Markdown("", elem_id="clu-status")
        clu_neighbours = gr.Gallery(label="Nearest neighbours", elem_id="clu-neighbours", **gallery)

    with gr.Tab("Map") as map_tab:
        colour_by = gr.Radio(["cluster", "label"], value="cluster", label="Colour by", elem_id="map-colour")
        the_map = gr.HTML("<p>Open this tab to draw the map.</p>", js_on_load=MAP_JS, css_template=MAP_CSS,
                          elem_id="map")
        map_status = gr.Markdown("PCA of the index vectors; hover a point for its image, click it to search.",
                                 elem_id="map-status")
        map_neighbours = gr.Gallery(label="Nearest neighbours", elem_id="map-neighbours", **gallery)

    def show_duplicates(t="auto", s=None):
        try:
            t, items, summary, path = v.duplicate_view(t, s)
        except ExploreError as e:
            return gr.update(), [], warn(e), None
        return t, items, summary, path

    def on_tab_duplicates(s):
        return show_duplicates("auto", s)

    def regroup(t, s):
        return show_duplicates(t, s)[1:]

    def on_group(evt: gr.SelectData, t, s):
        items, ids = v.group_view(t, evt.index, s)
        return items, ids

    def on_clusters_tab():
        try:
            return v.cluster_view()
        except ExploreError as e:
            return [], warn(e)

    def on_cluster(evt: gr.SelectData):
        return v.cluster_members(evt.index)

    def on_member(evt: gr.SelectData, ids):
        return v.neighbours(ids[evt.index])[::-1]

    def on_map(colour):
        try:
            return v.map_html(colour)
        except ExploreError as e:
            return f"<p>{html.escape(warn(e))}</p>"

    def on_point(evt: gr.EventData):
        items, status = v.neighbours(int(evt.id))
        return items, status

    ev = dict(show_progress="minimal", api_visibility="private")
    dup_tab.select(on_tab_duplicates, [similar], [threshold, groups, dup_summary, csv_file], **ev)
    # "input" fires on the user's drags and on a number typed into the slider's box, never when the tab sets the
    # calibrated value: a "change" handler that also wrote the slider re-fired itself, and that late re-fire could
    # overwrite a value the user had just typed with the calibrated one
    threshold.input(regroup, [threshold, similar], [groups, dup_summary, csv_file], trigger_mode="always_last", **ev)
    similar.submit(regroup, [threshold, similar], [groups, dup_summary, csv_file], trigger_mode="always_last", **ev)
    groups.select(on_group, [threshold, similar], [group_files, dup_ids], **ev)
    clu_tab.select(on_clusters_tab, None, [clusters, clu_summary], **ev)
    clusters.select(on_cluster, None, [members, member_ids], **ev)
    members.select(on_member, [member_ids], [clu_status, clu_neighbours], **ev)
    map_tab.select(on_map, [colour_by], [the_map], **ev)
    colour_by.change(on_map, [colour_by], [the_map], **ev)
    the_map.click(on_point, None, [map_neighbours, map_status], **ev)
    return v
